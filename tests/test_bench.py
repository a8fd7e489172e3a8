from helpers import run_script


def test_bench_prints_a_row_per_config_and_marks_what_it_cannot_measure():
    p = run_script("bench.py", "--configs", "default,gpt2", "--seconds", "0.2", "--steps", "1", "--warmup", "1",
                   "--device", "cpu")
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| config | params | batch | NTP ms/step | MEAP ms/step | NTP tok/s")
    default = rows[1].split(" | ")
    assert default[0] == "| default" and default[1] == "0.45M" and default[2] == "32x64"
    assert float(default[3]) > 0 and float(default[4]) > 0 and default[5].endswith("k")  # ms/step and tok/s
    assert rows[2].startswith("| gpt2 | 123.59M | 16x1024 | not measured: needs a CUDA GPU")
    p = run_script("bench.py", "--configs", "huge", check=False)
    assert p.returncode != 0 and p.stderr.strip() == "error: unknown config 'huge'; choose from default, larger, gpt2"
