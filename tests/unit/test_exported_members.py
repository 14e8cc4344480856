import subprocess
import sys

import coalmine


def test_public_api_is_exactly_this():
    # The public surface grows on purpose only: change this list together with the docs.
    assert coalmine.__all__ == [
        "CoalmineError",
        "ConfigError",
        "ConfigProblem",
        "ContractError",
        "DeployEvent",
        "Deployment",
        "Judgement",
        "MetricEvent",
        "MetricResult",
        "MetricSpec",
        "Profile",
        "Router",
        "Settings",
        "TransportError",
        "Verdict",
        "__version__",
        "decode_deploy_event",
        "decode_metric_events",
        "encode_verdict",
        "judge",
        "load_settings",
    ]
    for name in coalmine.__all__:
        assert hasattr(coalmine, name), name


def test_every_error_has_one_root():
    for error in (coalmine.ConfigError, coalmine.ContractError, coalmine.TransportError):
        assert issubclass(error, coalmine.CoalmineError)


def test_the_cli_starts_without_the_analyzers():
    # `coalmine --help`, `start` and `wait` must not pay for scipy (~0.3 s).
    code = "import sys, coalmine.cli; print(sorted(m for m in sys.modules if 'scipy' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(coalmine.__all__) <= set(dir(coalmine))
