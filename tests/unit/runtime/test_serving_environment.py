"""The serving processes' environment defaults: set where absent, never over the user's."""

from shoal.serve.runtime.config import SERVING_ENVIRONMENT, set_serving_environment


def test_defaults_are_set_where_the_environment_has_none():
    environ: dict[str, str] = {"PATH": "/bin"}
    set_serving_environment(environ)
    assert environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    assert environ["PATH"] == "/bin"
    assert set(SERVING_ENVIRONMENT) <= set(environ)


def test_the_environment_s_own_value_wins():
    environ = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    set_serving_environment(environ)
    assert environ == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
