"""Dep-wait for real: an sdist whose build needs a compiled dependency that the upstream
index has no armv7l wheel of (only its sdist, as numpy for armv7l on PyPI) waits while
the farm builds that dependency, then builds against the farm's own wheel and imports.

Real parts throughout: pypiserver as the upstream index, the master over HTTP on its
database, a builder's JobRunner with the docker backend building under QEMU in the
armv7l (bullseye, CPython 3.9) image, pip fetching build requirements from both indexes.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from builder.client import MasterClient
from builder.identity import BuilderIdentity
from builder.worker import JobRunner, choose_backend, free_disk
from common.config import Settings
from common.db import transaction
from common.models import BuildJob, OutputFile, Release, SourceFile
from common.states import JobState, TokenRole
from common.version import VERSION
from master.auth import create_token
from master.builds.build_plan import create_jobs
from master.pypi.releases import get_or_create_project
from master.web.app import create_app
from tests.sdists import add_build_requirements, make_sdist
from tests.servers import pypiserver, serve_app

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TARGET = "armv7l"

CORE_FILES = {
    "setup.py": (
        "from setuptools import Extension, setup\n"
        "setup(packages=['depcore'], package_data={'depcore': ['include/*.h']},\n"
        "      ext_modules=[Extension('depcore._core', ['depcore/_core.c'])])\n"
    ),
    "MANIFEST.in": "include depcore/include/*.h\n",
    "depcore/__init__.py": (
        "import os\n"
        "from depcore._core import answer\n"
        "def get_include():\n"
        "    return os.path.join(os.path.dirname(__file__), 'include')\n"
    ),
    "depcore/include/depcore.h": "#define DEPCORE_ANSWER 42\n",
    "depcore/_core.c": (
        "#include <Python.h>\n"
        '#include "include/depcore.h"\n'
        "static PyObject *answer(PyObject *s, PyObject *a) {\n"
        "    return PyLong_FromLong(DEPCORE_ANSWER);\n}\n"
        'static PyMethodDef M[] = {{"answer", answer, METH_NOARGS, 0}, {0}};\n'
        'static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "_core", 0, -1, M};\n'
        "PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&D); }\n"
    ),
}
# Like numpy.get_include(): the dependency is imported (its ARM extension runs) while
# the build is configured, and its header is compiled in.
USER_FILES = {
    "setup.py": (
        "from setuptools import Extension, setup\n"
        "from setuptools.command.build_ext import build_ext\n"
        "class with_depcore(build_ext):\n"
        "    def run(self):\n"
        "        import depcore\n"
        "        assert depcore.answer() == 42\n"
        "        for extension in self.extensions:\n"
        "            extension.include_dirs.append(depcore.get_include())\n"
        "        super().run()\n"
        "setup(ext_modules=[Extension('depuser', ['depuser.c'])],\n"
        "      cmdclass={'build_ext': with_depcore})\n"
    ),
    "depuser.c": (
        "#include <Python.h>\n"
        '#include "depcore.h"\n'
        "static PyObject *value(PyObject *s, PyObject *a) {\n"
        "    return PyLong_FromLong(DEPCORE_ANSWER + 1);\n}\n"
        'static PyMethodDef M[] = {{"value", value, METH_NOARGS, 0}, {0}};\n'
        'static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "depuser", 0, -1, M};\n'
        "PyMODINIT_FUNC PyInit_depuser(void) { return PyModule_Create(&D); }\n"
    ),
}


def _release(session: Session, sdist: Path, upstream: str) -> Release:
    """The release as the feed records it from the upstream index's page."""
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    release = Release(
        project=get_or_create_project(session, name), version=version, upstream_files=[sdist.name]
    )
    source = SourceFile(
        release=release,
        filename=sdist.name,
        url=f"{upstream.removesuffix('/simple/')}/packages/{sdist.name}",
        sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
        size=sdist.stat().st_size,
    )
    session.add_all([release, source])
    session.flush()
    return release


def _farm_settings(settings: Settings, upstream: str, master: str, work: Path) -> Settings:
    targets = {
        name: target.model_copy(update={"enabled": name == TARGET})
        for name, target in settings.targets.items()
    }
    builder = settings.builder.model_copy(
        update={
            "master_url": master,
            "backend": "docker",
            "work_dir": work,
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
            "build_timeout": 1800,
        }
    )
    upstream_settings = settings.upstream.model_copy(update={"index_url": upstream})
    return settings.model_copy(
        update={"targets": targets, "builder": builder, "upstream": upstream_settings}
    )


# One database is enough: the dep-wait decisions run on both in tests/test_dep_wait.py.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_job_waits_for_its_build_dependency_which_the_farm_builds_first(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    # The upstream index has what any build needs (setuptools), and of these two projects
    # only their sdists.
    add_build_requirements(packages)
    core = make_sdist(tmp_path / "src", packages, "depcore", "1.0", CORE_FILES)
    user = make_sdist(
        tmp_path / "src", packages, "depuser", "1.0", USER_FILES, build_requires=["depcore>=1.0"]
    )
    with pypiserver(packages) as upstream, serve_app(create_app(settings, factory)) as master:
        farm = _farm_settings(settings, upstream, master, tmp_path / "work")
        with transaction(factory) as session:
            _release(session, core, upstream)  # known to the farm, no job yet
            release = _release(session, user, upstream)
            [job] = create_jobs(session, release, release.source_files[0], farm.planned_targets())
            assert (job.target, job.python_tag) == (TARGET, "cp39")
            user_job = job.id
            token = create_token(session, "dep-wait-builder", TokenRole.BUILDER)
        identity = BuilderIdentity("dep-wait-builder", uuid4().hex)
        backend = choose_backend(farm, TARGET, identity)
        client = MasterClient(master, token)
        try:
            client.register(
                "armv7l", TARGET, backend.name, backend.python_tags(), VERSION,
                free_disk(farm),
            )  # fmt: skip
            runner = JobRunner(farm, "armv7l", backend, client)

            runner.run(user_job)
            waiting = _job(factory, user_job)
            assert waiting.state is JobState.DEP_WAIT, waiting.summary
            assert waiting.waiting_for == "depcore>=1.0"
            with factory() as session:
                [planned] = session.scalars(
                    select(BuildJob).where(BuildJob.requested_by == f"dep-wait of job {user_job}")
                ).all()
                assert planned.release.project.name == "depcore"
                dependency = planned.id

            runner.run(dependency)
            assert _job(factory, dependency).state is JobState.BUILT
            resumed = _job(factory, user_job)
            assert resumed.state is JobState.PENDING, resumed.summary

            runner.run(user_job)
        finally:
            client.close()
            backend.close()
    built = _job(factory, user_job)
    assert built.state is JobState.BUILT, built.summary
    assert built.failure_reason is None and built.attempts == 2
    log = gzip.decompress(Path(built.log_path or "").read_bytes())
    with factory() as session:
        wheels = session.scalars(select(OutputFile.filename).where(OutputFile.published)).all()
    assert any(name.startswith("depcore-1.0-cp39-cp39-manylinux") for name in wheels), wheels
    assert any(name.startswith("depuser-1.0-cp39-cp39-manylinux") for name in wheels), wheels
    # The second attempt took depcore from the farm's own index, and imported the wheel.
    assert b"depcore-1.0-cp39-cp39-manylinux" in log
    assert b"smoke test passed" in log


def _job(factory: sessionmaker[Session], job_id: int) -> BuildJob:
    with factory() as session:
        job = session.get(BuildJob, job_id)
        assert job is not None
        session.expunge(job)
        return job
