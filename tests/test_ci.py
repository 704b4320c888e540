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
