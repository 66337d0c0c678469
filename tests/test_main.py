"""``fastrnn check``: a required backend that is missing fails the check."""
import io

from fastrnn import __main__ as cli


def test_check_passes_with_the_available_backends(monkeypatch):
    monkeypatch.delenv("FASTRNN_REQUIRE_BACKENDS", raising=False)
    out = io.StringIO()
    assert cli.check(3, 2, 3, 4, repeats=1, out=out)
    assert out.getvalue().splitlines()[-1].startswith("OK: largest difference")


def test_check_fails_when_a_required_backend_is_missing(monkeypatch):
    monkeypatch.setenv("FASTRNN_REQUIRE_BACKENDS", "reference,no-such-backend")
    out = io.StringIO()
    assert not cli.check(3, 2, 3, 4, repeats=1, out=out)
    assert "FAILED: FASTRNN_REQUIRE_BACKENDS asks for ['no-such-backend']" in out.getvalue()
