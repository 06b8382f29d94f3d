"""Only the build step that pyproject.toml cannot declare: the gRPC code generated from
proto/ (yujing.service._generated) is built before setuptools collects the packages, so
a wheel carries it and an installed package needs neither protoc nor write access to
its own folder. (A checkout also regenerates it at first import after the .proto
changes: yujing.service.contract.)"""
import importlib.util
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _generate_contract() -> None:
    spec = importlib.util.spec_from_file_location("_yujing_protogen", ROOT / "service" / "protogen.py")
    protogen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protogen)
    protogen.ensure(ROOT / "proto", protogen.PROTO_FILES, ROOT / "service" / "_generated")


_generate_contract()
setup()
