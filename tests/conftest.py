from __future__ import annotations

import ast
import functools
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

# The tests that start Ray and train or evaluate on it (`@pytest.mark.ray`, or `pytestmark` of a module) load
# both cores and bind the workers' metrics ports (9500+). Under `make test` (pytest -n 2 --dist loadgroup)
# they run one after another on one xdist worker while the other takes the rest (API servers, S3, charts,
# data, in-process rendering). xdist's scheduler runs where no test is collected and sees node ids only, so
# it reads the marker from the test's source (`marked_ray`); collection checks that reading against the
# markers pytest sees, so the two cannot drift.


@functools.cache
def _ray_marked(path: str) -> tuple[bool, frozenset[str]]:
    """(the whole module, the names of the functions and classes) marked `ray` in a test file's source."""
    tree = ast.parse(Path(path).read_text())

    def is_ray(node: ast.expr) -> bool:
        return any(
            isinstance(n, ast.Attribute) and n.attr == "ray" and ast.unparse(n) == "pytest.mark.ray"
            for n in ast.walk(node)
        )

    module = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and is_ray(n.value)
        for n in tree.body
    )
    marked = frozenset(
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and any(is_ray(d) for d in n.decorator_list)
    )
    return module, marked


def marked_ray(nodeid: str, root: Path) -> bool:
    """Whether the test of `nodeid` (relative to the rootdir `root`) is marked `ray` in its source."""
    path, _, rest = nodeid.partition("::")
    name = rest.split("::", 1)[0].split("[", 1)[0]
    module, marked = _ray_marked(str(root / path))
    return module or name in marked


@pytest.hookimpl(optionalhook=True)  # without xdist (-p no:xdist) pytest would call it an unknown hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup, the tests on Ray in one group. (xdist's own grouping by the xdist_group mark
    edits `item._nodeid`, which pytest 9 no longer reads: every test would be its own group.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OnRayTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:  # one scope for every test on Ray; each other its own
            return "on-ray" if marked_ray(nodeid, config.rootpath) else nodeid

    return OnRayTogether(config, log)


# What a test starts, by the fixtures that start it: `--fast` (make test-fast) leaves such tests out
COMPONENTS = {
    "s3_server": "SeaweedFS",
    "apiserver": "an API server",
    "kuberay_server": "an API server",
    "operator_proc": "the operator",
    "ray_local": "Ray",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="only the tests that start nothing: no Ray, SeaweedFS, API server or operator",
    )


def _starts_something(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(item.get_closest_marker("ray") or fixtures & COMPONENTS.keys())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that takes the `ray_local` fixture must be marked `ray`; the scheduler's reading of the
    marker (`marked_ray`) must be what pytest sees."""
    unmarked = [
        i.nodeid for i in items if "ray_local" in getattr(i, "fixturenames", ()) and not i.get_closest_marker("ray")
    ]
    if unmarked:
        raise pytest.UsageError(f"these tests start Ray; mark them @pytest.mark.ray: {', '.join(unmarked)}")
    misread = [i.nodeid for i in items if bool(i.get_closest_marker("ray")) != marked_ray(i.nodeid, config.rootpath)]
    if misread:
        raise pytest.UsageError(
            "tests/conftest.py marked_ray reads these tests' ray marker wrongly (mark the test function or"
            f" the module's pytestmark): {', '.join(misread)}"
        )
    if config.getoption("fast"):
        slow = [i for i in items if _starts_something(i)]
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if not _starts_something(i)]


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
def tiny_wan_t2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.model.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("tiny-wan-t2v"), "t2v")


@pytest.fixture(scope="session")
def tiny_wan_i2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from disney_train.model.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("tiny-wan-i2v"), "i2v")


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
    from diffusers import CogVideoXPipeline

    return lora_file_bytes({peft_key(n): torch.randn(p.shape, generator=g) for n, p in params}, cfg, CogVideoXPipeline)


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
