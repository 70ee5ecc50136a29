from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from disney_train.config import S3Options
from tests.support.apiserver import KUBERAY_SCHEMAS, VFT_CRD, ApiServer, kuberay_reference_crds, start_apiserver
from tests.support.faultproxy import FaultProxy
from tests.support.kuberay import Cluster, OperatorProcess, start_operator
from tests.support.seaweed import BUCKET, RW, SeaweedS3, start_seaweed

# The tests that start Ray and train or evaluate on it: they load both cores and bind the workers'
# metrics ports (9500+). Under `make test` (pytest -n 2 --dist loadgroup) they run one after another
# on one xdist worker while the other takes the rest (API servers, S3, charts, data, in-process
# rendering). Module paths, or module::test for the one or two such tests of a module.
ON_RAY = (
    "tests/test_train.py",
    "tests/test_elastic.py",
    "tests/test_prometheus.py",
    "tests/test_cli.py::test_run_on_the_embedded_default",
    "tests/test_cli.py::test_cache_command_builds_the_latent_cache",
    "tests/test_eval.py::test_eval_on_ray_runs_as_one_task_with_a_workers_resources",
)


def on_ray(nodeid: str) -> bool:
    return nodeid.split("[", 1)[0].startswith(ON_RAY)


def xdist_scope(nodeid: str) -> str:
    """One scope for every test on Ray; each other test is its own."""
    return "on-ray" if on_ray(nodeid) else nodeid


@pytest.hookimpl(optionalhook=True)  # without xdist (-p no:xdist) pytest would call it an unknown hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup, grouped by `xdist_scope`. (xdist's own grouping by the xdist_group mark
    edits `item._nodeid`, which pytest 9 no longer reads: every test would be its own group.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OnRayTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return OnRayTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """No test on Ray may run beside the others: one that takes the `ray_local` fixture must be in
    ON_RAY, and every entry must name tests (a renamed test would leave it)."""
    unlisted = [i.nodeid for i in items if "ray_local" in getattr(i, "fixturenames", ()) and not on_ray(i.nodeid)]
    if unlisted:
        raise pytest.UsageError(f"tests/conftest.py ON_RAY does not name these tests on Ray: {', '.join(unlisted)}")
    if config.args not in (["tests"], []) or config.option.keyword or config.option.markexpr:
        return  # a chosen subset need not hold them all
    stale = [p for p in ON_RAY if not any(i.nodeid.split("[", 1)[0].startswith(p) for i in items)]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py ON_RAY names no collected test: {', '.join(stale)}")


@pytest.fixture(scope="session", autouse=True)
def _hermetic_aws_env() -> Iterator[None]:
    """No test may use a developer's AWS profile or ask a cloud metadata service for keys."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
    )
    yield
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> S3Options:
    """Read-write keys in the environment (as a Kubernetes Secret would put them); the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", RW[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", RW[1])
    return S3Options(endpoint_url=s3_server.endpoint, max_attempts=4)


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh key prefix per test: `name-abcd1234`."""
    return f"{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_uri(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="session")
def sample_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.data.sample import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(out)
    return out


@pytest.fixture(scope="session")
def sample_src_x3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.data.sample import write_sample

    out = tmp_path_factory.mktemp("sample-x3")
    write_sample(out, copies=3)
    return out


@pytest.fixture(scope="session")
def tiny_t2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-t2v"), "t2v")


@pytest.fixture(scope="session")
def tiny_i2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-i2v"), "i2v")


@pytest.fixture(scope="session")
def tiny_lora(tiny_t2v: Path) -> bytes:
    """A LoRA file for the tiny t2v model with random (non-zero) A and B, as training writes it."""
    import torch

    from disney_train.config import LoraConfig
    from disney_train.model.load import load_transformer
    from disney_train.model.lora import add_lora, lora_file_bytes, peft_key

    cfg = LoraConfig(rank=4, alpha=8)
    params = add_lora(load_transformer(tiny_t2v), cfg)
    g = torch.Generator().manual_seed(0)
    return lora_file_bytes({peft_key(n): torch.randn(p.shape, generator=g) for n, p in params}, cfg)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CLIP in the transformers layout."""
    from disney_train.model.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def packed_sample(sample_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 sample clips packed locally for 17-frame training (a fresh copy per test: `packed`)."""
    from disney_train.data.pack import PackOptions, pack

    out = tmp_path_factory.mktemp("packed-sample")
    pack(sample_src, str(out), PackOptions(min_frames=17, shard_bytes=512 * 1024), None, None)
    return out


@pytest.fixture
def packed(packed_sample: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(packed_sample, tmp_path / "packed"))


# --------------------------------------------------------------------------- the operator's tests
OPERATOR_NAMESPACES = "vft-*"  # the session operator watches these; each test takes a fresh one


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """envtest-lite with the core/v1 stub kopf needs; our CRD and our schemas of KubeRay's installed."""
    server = start_apiserver(tmp_path_factory.mktemp("apiserver"))
    try:
        server.install(VFT_CRD, KUBERAY_SCHEMAS / "rayjobs.ray.io.yaml", KUBERAY_SCHEMAS / "rayclusters.ray.io.yaml")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kuberay_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A plain API server with KubeRay's own CRDs (reference data beside the project, not copied in):
    rendered RayJobs are dry-run against them."""
    server = start_apiserver(tmp_path_factory.mktemp("kuberay-apiserver"), core_v1_stub=False)
    try:
        crds = kuberay_reference_crds()
        server.install(crds / "ray.io_rayjobs.yaml", crds / "ray.io_rayclusters.yaml")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(apiserver: ApiServer) -> Cluster:
    return Cluster(apiserver)


@pytest.fixture(scope="session")
def operator_proc(
    apiserver: ApiServer, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`disney-train-operator run` watching vft-* namespaces. It reads runs' progress with each VideoFineTune's
    own Secret (the `ns` fixture makes it): keys of its own, which S3 refuses, must never be what it reads with."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    own = {"AWS_ACCESS_KEY_ID": "the-operators-own", "AWS_SECRET_ACCESS_KEY": "refused-by-s3-0123456789"}
    op = start_operator(apiserver, log, [OPERATOR_NAMESPACES], {**own, "DISNEY_OPERATOR_PROGRESS_ENDPOINTS": '["*"]'})
    yield op
    op.stop()


@pytest.fixture
def ns(cluster: Cluster) -> str:
    """A tenant's namespace, with the S3 Secret its VideoFineTunes name (spec.s3Credentials: s3-keys)."""
    name = f"vft-{uuid.uuid4().hex[:8]}"
    cluster.s3_secret(name, RW)
    return name
