"""``tether lb haproxy|nginx --cluster FILE``: the configuration on standard output, or a
one-line reason and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.cli import build_parser, main

CLUSTER = '[[nodes]]\nid = "n1"\naddress = "127.0.0.1:1081"\n'


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    return path


@pytest.mark.parametrize(
    ("kind", "first_directive"), [("haproxy", "global"), ("nginx", "user www-data;")]
)
def test_prints_the_configuration(
    kind: str, first_directive: str, cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lb", kind, "--cluster", str(cluster_file)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"# {'HAProxy' if kind == 'haproxy' else 'nginx'} configuration")
    directives = [line for line in out.split("\n") if line and not line.startswith("#")]
    assert directives[0] == first_directive
    assert f"--cluster {cluster_file}" in out


def test_options(cluster_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lb", "haproxy", "--cluster", str(cluster_file), "--user", ""]) == 0
    assert "user haproxy" not in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["lb", "nginx", "--cluster", str(cluster_file), "--runtime-dir", str(run)]) == 0
    assert f"pid {run}/nginx.pid;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["haproxy", "--cluster", "{missing}"], "cannot read"),
        (["nginx", "--cluster", "{bad}"], "nodes[0].weight: must be an integer 0-256"),
        (["haproxy", "--cluster", "{good}", "--user", "Root User"], "not a user name"),
        (["nginx", "--cluster", "{good}", "--runtime-dir", "/a b"], "absolute path"),
    ],
)
def test_errors_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text(CLUSTER + "weight = 999\n")
    (tmp_path / "good.toml").write_text(CLUSTER)
    paths = {
        "missing": tmp_path / "missing.toml",
        "bad": tmp_path / "bad.toml",
        "good": tmp_path / "good.toml",
    }
    assert main(["lb", *(a.format(**paths) for a in args)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("tether lb: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("args", [["lb"], ["lb", "apache", "--cluster", "x"], ["lb", "haproxy"]])
def test_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    assert "usage: tether lb" in capsys.readouterr().err


def test_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "load balancer configuration" in capsys.readouterr().out
