import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "ofa.cli", *args], capture_output=True, text=True)


def test_space_json():
    p = run("space", "mbv3-w1.0", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["num_subnets_per_resolution"] == 21758655492572485851
    assert round(info["extremes"]["largest@224"]["macs"] / 1e6, 1) == 566.2
    assert round(info["extremes"]["smallest@128"]["macs"] / 1e6, 1) == 41.5


def test_space_unknown_preset_one_line():
    p = run("space", "mbv3-nope")
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "invalid choice: 'mbv3-nope'" in p.stderr
