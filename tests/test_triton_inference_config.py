"""The settings that choose how inference requests reach Triton (``--triton-inference``,
``--triton-http-url``): what is refused, with which message."""
from __future__ import annotations

import pytest

from yujing.service.config import Config
from yujing.service.errors import ConfigError


def test_an_http_url_is_for_an_external_triton_only():
    Config(models="external", triton_url="127.0.0.1:8001", triton_http_url="127.0.0.1:8000").validate()
    with pytest.raises(ConfigError, match="triton_http_url.*external Triton"):
        Config(triton_http_url="127.0.0.1:8000").validate()


@pytest.mark.parametrize("url", ["127.0.0.1", "127.0.0.1:http", ":8000", "127.0.0.1:0", "127.0.0.1:70000"])
def test_a_malformed_http_url_is_refused(url):
    with pytest.raises(ConfigError, match="expected host:port"):
        Config(models="external", triton_url="127.0.0.1:8001", triton_http_url=url).validate()


def test_the_protocol_is_http_or_grpc():
    assert Config().triton_inference == "http"
    Config(triton_inference="grpc").validate()
    with pytest.raises(ConfigError, match="expected http or grpc"):
        Config(triton_inference="rest").validate()
