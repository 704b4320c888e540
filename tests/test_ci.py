"The README's two commands are the ones CI runs, and the README is generated from nbs/index.ipynb."
import re, subprocess, sys
from conftest import ROOT

def readme_commands():
    blocks = re.findall(r'```sh\n(.*?)\n```', (ROOT/'README.md').read_text(), flags=re.S)
    return blocks[0].strip(), blocks[1].strip()

def test_ci_runs_the_readme_commands():
    install, test = readme_commands()
    ci = (ROOT/'.ci'/'run').read_text().splitlines()
    assert install in ci, install
    assert test in ci, test
    assert ci.index(install) < ci.index(test)

def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_cli_help_runs():
    r = subprocess.run(['pd-align', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'usage: pd-align' in r.stdout

def tracked_text_files():
    "Every file git tracks or would add (untracked, not ignored), read as text; binary files are skipped."
    r = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in r.stdout.splitlines():
        path = ROOT / name
        if not path.is_file(): continue
        try: yield name, path.read_text(encoding='utf-8')
        except UnicodeDecodeError: continue

def test_project_cites_no_private_design_brief():
    "Self-contained: no file points the reader to a design document that is not in the repository (cite the paper)."
    brief = 'DES' + 'IGN' # spelt in two pieces so that this test does not find itself
    pattern = re.compile(brief + r'(\.md\b|\s*§)')
    hits = [f'{name}:{text.count(chr(10), 0, m.start()) + 1}' for name, text in tracked_text_files() for m in pattern.finditer(text)]
    assert not hits, f'{len(hits)} references to {brief}.md, a file readers do not have: {hits[:10]}'

def test_license_and_package_metadata():
    "settings.ini declares Apache-2.0: the full licence text ships, and the metadata carries no placeholder."
    text = (ROOT / 'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text
    assert len(text.splitlines()) > 170 # the full text, not a stub
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    meta = cfg['DEFAULT']
    assert meta['license'] == 'apache2'
    for key in ('author_email', 'git_url', 'doc_host'):
        assert 'example.' not in meta[key] and 'pd-align.github' not in meta[key], (key, meta[key])
    assert meta['author'] and meta['description']
