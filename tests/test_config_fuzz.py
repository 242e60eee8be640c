"""Property: any single --set on a valid config either validates or is a message with exit 2, never a traceback."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefalign.cli import main
from prefalign.config.loader import describe

KEYS = [key for key, _, _ in describe()] + ["train.nonsense", "sampling", "pairs.count.extra", "run_dir", "name"]
SCALARS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.just("null"),
    st.just("~"),
)
VALUES = st.one_of(
    SCALARS.map(str),
    st.lists(SCALARS, max_size=3).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
    st.just("{a: 1}"),
    st.just("{types: [sigmoid], weights: [1, 2]}"),
    st.just("[slic, {types: []}]"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_a_mutated_config_validates_or_exits_2_with_a_message(key, value, capsys):
    try:
        code = main(["config", "tiny", "--set", f"{key}={value}"])
    except SystemExit as e:  # argparse refusing the command line itself
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (key, value, code, err)
    assert "Traceback" not in err, (key, value, err)
    if code == 2:
        assert err.startswith("prefalign: ") and len(err.strip()) > len("prefalign: "), (key, value, err)


@pytest.mark.parametrize("text", ["train: [", "train:\n  betas: {", "\t", "name: [1, 2"])
def test_unparsable_yaml_files_exit_2(tmp_path, text, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["config", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
