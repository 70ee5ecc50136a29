"""The container images (`images/*.Dockerfile`) agree with the lock, the operator and the build context.

Nothing is built (no Docker engine, no network): each Dockerfile is parsed with dockerfile-parse and
its versions, users, installs and COPYs are checked against constraints.txt, pyproject.toml,
`disney_operator.settings` and `.dockerignore`.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from disney_operator.settings import RAY_VERSION, Settings

ROOT = Path(__file__).resolve().parents[1]
TRAINER = "images/trainer.Dockerfile"
OPERATOR = "images/operator.Dockerfile"
IMAGES = (TRAINER, OPERATOR)
PROJECT = "disney-train"

# The newest CPython that each decord release has wheels for (decord publishes no sdist to build).
DECORD_MAX_PYTHON = {"0.6.0": "3.11"}
# Installers the lock does not pin; any other package an image pins must be in constraints.txt.
INSTALLERS = {"pip", "setuptools", "wheel", "uv"}
# The user each image runs as: Ray's, and the distroless-style nonroot of the operator.
UIDS = {TRAINER: 1000, OPERATOR: 65532}
# Options of `pip install` that take a value (the next token unless written --opt=value).
PIP_VALUE_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--only-binary",
    "--no-binary",
    "--trusted-host",
    "--upgrade-strategy",
}


@dataclass(frozen=True)
class Instruction:
    kind: str  # FROM, RUN, ... (upper case)
    value: str
    line: int  # 1-based


@dataclass
class Stage:
    image: str  # as written after FROM (unexpanded)
    name: str | None
    line: int
    body: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    rel: str
    global_args: dict[str, str | None]
    stages: list[Stage]

    def where(self, ins: Instruction | Stage) -> str:
        return f"{self.rel}:{ins.line}"

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def arg(self, name: str) -> str:
        """The default of build ARG `name` (one value, wherever it is declared)."""
        values = {v for k, v in self.global_args.items() if k == name and v is not None}
        for stage in self.stages:
            values |= {v for k, v in stage_args(stage).items() if k == name and v is not None}
        assert len(values) == 1, f"{self.rel}: ARG {name} needs exactly one default value, found {sorted(values)}"
        return values.pop()

    def args(self) -> dict[str, str]:
        names = set(self.global_args) | {k for s in self.stages for k in stage_args(s)}
        return {n: self.arg(n) for n in names if self._has_default(n)}

    def _has_default(self, name: str) -> bool:
        if self.global_args.get(name) is not None:
            return True
        return any(stage_args(s).get(name) is not None for s in self.stages)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise AssertionError(f"{self.rel}: no stage named {name!r}")


def split_arg(value: str) -> tuple[str, str | None]:
    name, sep, default = value.strip().partition("=")
    return name, (default.strip().strip('"').strip("'") if sep else None)


def stage_args(stage: Stage) -> dict[str, str | None]:
    return dict(split_arg(i.value) for i in stage.body if i.kind == "ARG")


@cache
def dockerfile(rel: str) -> Dockerfile:
    path = ROOT / rel
    assert path.is_file(), f"{rel} is missing"
    parser = DockerfileParser(path=str(path))
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        ins = Instruction(str(item["instruction"]).upper(), str(item["value"]), int(item["startline"]) + 1)
        if ins.kind == "COMMENT":
            continue
        if ins.kind == "FROM":
            words = ins.value.split()
            flags = [w for w in words if w.startswith("--")]  # --platform=...
            rest = [w for w in words if not w.startswith("--")]
            name = rest[2] if len(rest) == 3 and rest[1].lower() == "as" else None
            assert len(rest) in (1, 3), f"{rel}:{ins.line}: cannot read FROM {ins.value!r} ({flags})"
            stages.append(Stage(rest[0], name, ins.line))
        elif not stages:
            assert ins.kind == "ARG", f"{rel}:{ins.line}: only ARG may come before the first FROM, not {ins.kind}"
            name, default = split_arg(ins.value)
            global_args[name] = default
        else:
            stages[-1].body.append(ins)
    assert stages, f"{rel}: no FROM"
    return Dockerfile(rel, global_args, stages)


def expand(text: str, values: dict[str, str]) -> str:
    """Substitute `${NAME}` / `$NAME` for the names given (others stay as written)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def words(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands (split at &&, ||, ;, |)."""
    out: list[list[str]] = [[]]
    for w in words(run):
        if w in {"&&", "||", ";", "|", "&"}:
            out.append([])
        else:
            out[-1].append(w)
    return [c for c in out if c]


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            out[canonicalize_name(req.name)] = spec.version
    return out


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class PipInstall:
    df: Dockerfile
    stage: Stage
    ins: Instruction
    options: dict[str, list[str]]
    requirements: list[str]  # ARGs expanded

    @property
    def where(self) -> str:
        return f"{self.df.where(self.ins)} (stage {self.stage.name or self.stage.image})"

    @property
    def project_extras(self) -> set[str] | None:
        """The extras of the project install (`.[a,b]`), None when this install is not the project's."""
        for req in self.requirements:
            m = re.fullmatch(r"\.(?:\[([^\]]*)\])?", req)
            if m:
                return {canonicalize_name(e) for e in (m.group(1) or "").split(",") if e.strip()}
        return None

    def option(self, *names: str) -> list[str]:
        return [v for n in names for v in self.options.get(n, [])]


def pip_installs(rel: str) -> list[PipInstall]:
    df = dockerfile(rel)
    values = df.args()
    out: list[PipInstall] = []
    for stage in df.stages:
        for ins in stage.body:
            if ins.kind != "RUN":
                continue
            for cmd in commands(ins.value):
                for i in range(1, len(cmd)):
                    if cmd[i] == "install" and Path(cmd[i - 1]).name in {"pip", "pip3"}:
                        options, reqs = parse_pip_args([expand(a, values) for a in cmd[i + 1 :]])
                        out.append(PipInstall(df, stage, ins, options, reqs))
    return out


def parse_pip_args(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    options: dict[str, list[str]] = {}
    reqs: list[str] = []
    it = iter(args)
    for a in it:
        if a.startswith("-"):
            name, eq, value = a.partition("=")
            if name in PIP_VALUE_OPTIONS:
                options.setdefault(name, []).append(value if eq else next(it, ""))
            elif name in {"-e", "--editable"}:
                reqs.append(value if eq else next(it, ""))
            else:
                options.setdefault(name, [])
        else:
            reqs.append(a)
    return options, reqs


def project_installs(rel: str) -> list[PipInstall]:
    found = [p for p in pip_installs(rel) if p.project_extras is not None]
    assert found, f"{rel}: no `pip install .[...]` of the project"
    return found


def env_of(stage: Stage) -> dict[str, str]:
    """The stage's ENV settings (the last value of each name), as written."""
    out: dict[str, str] = {}
    for ins in stage.body:
        if ins.kind == "ENV":
            parts = words(ins.value)
            if parts and "=" not in parts[0]:  # legacy `ENV NAME value`
                out[parts[0]] = " ".join(parts[1:])
            else:
                for p in parts:
                    name, _, value = p.partition("=")
                    out[name] = value
    return out


def apt_packages(stage: Stage) -> set[str]:
    out: set[str] = set()
    for ins in stage.body:
        if ins.kind == "RUN":
            for cmd in commands(ins.value):
                for i in range(len(cmd) - 1):
                    if Path(cmd[i]).name in {"apt-get", "apt"} and cmd[i + 1] == "install":
                        out |= {w for w in cmd[i + 2 :] if not w.startswith("-")}
    return out


def external_images(df: Dockerfile) -> list[tuple[Stage, str]]:
    """(stage, expanded image reference) for every FROM that is not an earlier stage."""
    names: set[str] = set()
    out: list[tuple[Stage, str]] = []
    values = {k: v for k, v in df.global_args.items() if v is not None}
    for stage in df.stages:
        ref = expand(stage.image, values)
        if ref not in names:
            out.append((stage, ref))
        if stage.name:
            names.add(stage.name)
    return out


def release(text: str, what: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    assert m, f"{what}: no major.minor version in {text!r}"
    return int(m.group(1)), int(m.group(2))


def python_versions() -> dict[str, str]:
    """The full Python version each image runs."""
    op_image = dockerfile(OPERATOR).arg("PYTHON_IMAGE")
    m = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim(?:-\w+)?", op_image)
    assert m, f"{OPERATOR}: ARG PYTHON_IMAGE={op_image!r} is not python:<x.y.z>-slim[-<debian>]"
    return {TRAINER: dockerfile(TRAINER).arg("PYTHON_VERSION"), OPERATOR: m.group(1)}


# -- versions ----------------------------------------------------------------------------------------


def test_torch_version_is_the_pinned_one() -> None:
    torch = dockerfile(TRAINER).arg("TORCH_VERSION")
    assert torch == pins()["torch"], (
        f"{TRAINER}: ARG TORCH_VERSION={torch} but constraints.txt pins torch=={pins()['torch']}"
    )


def test_every_package_an_image_pins_is_the_locked_version() -> None:
    locked = pins()
    for rel in IMAGES:
        for p in pip_installs(rel):
            for text in p.requirements:
                if p.project_extras is not None and re.fullmatch(r"\.(\[[^\]]*\])?", text):
                    continue
                req = Requirement(text)
                name = canonicalize_name(req.name)
                if name in INSTALLERS:
                    continue
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", (
                    f"{p.where}: `pip install {text}` must pin one exact version (==) from constraints.txt"
                )
                assert name in locked, f"{p.where}: `pip install {text}`: {req.name} is not in constraints.txt"
                assert specs[0].version == locked[name], (
                    f"{p.where}: `pip install {text}` but constraints.txt pins {req.name}=={locked[name]}"
                )


def test_every_project_install_uses_the_constraints() -> None:
    for rel in IMAGES:
        for p in project_installs(rel):
            given = [Path(c).name for c in p.option("-c", "--constraint")]
            assert "constraints.txt" in given, f"{p.where}: the project install must use `-c constraints.txt`"
            copied = {src for ins in p.stage.body if ins.line < p.ins.line for src in copy_sources(ins)}
            assert "constraints.txt" in copied, f"{p.where}: constraints.txt is not COPY'd into this stage first"


def test_python_is_the_one_decord_and_pyproject_allow() -> None:
    decord = pins()["decord"]
    assert decord in DECORD_MAX_PYTHON, (
        f"constraints.txt pins decord=={decord}: check which CPython its wheels cover and add it to DECORD_MAX_PYTHON"
    )
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    versions = python_versions()
    for rel, version in versions.items():
        where = f"{rel}: Python {version}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{where}: pin an exact x.y.z version"
        assert release(version, where) == release(DECORD_MAX_PYTHON[decord], "decord"), (
            f"{where}: decord {decord} has wheels up to CPython {DECORD_MAX_PYTHON[decord]}; use that minor version"
        )
        assert version in requires, f"{where} is outside pyproject.toml's requires-python {requires}"
    assert len(set(versions.values())) == 1, f"the images run different Pythons: {versions}"


def test_ray_is_the_version_the_operator_tells_kuberay() -> None:
    assert pins()["ray"] == RAY_VERSION, (
        f"constraints.txt pins ray=={pins()['ray']} (the trainer image's Ray) but "
        f"disney_operator.settings.RAY_VERSION={RAY_VERSION} (the rayVersion the operator gives KubeRay)"
    )


def test_operator_default_image_is_the_trainer_of_this_version() -> None:
    version = pyproject()["project"]["version"]
    image = Settings().image
    assert image.rsplit(":", 1)[-1] == version and image.rsplit(":", 1)[0].endswith("/trainer"), (
        f"disney_operator.settings: default image {image!r} is not .../trainer:{version} (pyproject's version)"
    )


# -- CUDA and base images ----------------------------------------------------------------------------


def test_cuda_of_the_base_matches_the_torch_index() -> None:
    """DeepSpeed's just-in-time ops refuse an nvcc whose CUDA major.minor differs from torch's."""
    df = dockerfile(TRAINER)
    tag, index = df.arg("CUDA_TAG"), df.arg("TORCH_INDEX")
    m = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)/?", index)
    assert m, f"{TRAINER}: ARG TORCH_INDEX={index!r} is not PyTorch's https://download.pytorch.org/whl/cuXYZ"
    wheel_cuda = (int(m.group(1)), int(m.group(2)))
    base_cuda = release(tag, f"{TRAINER}: ARG CUDA_TAG")
    assert base_cuda == wheel_cuda, (
        f"{TRAINER}: base CUDA {tag} (ARG CUDA_TAG) but torch from {index} (ARG TORCH_INDEX) is built for "
        f"CUDA {wheel_cuda[0]}.{wheel_cuda[1]}"
    )
    for stage, ref in external_images(df):
        if ref.startswith("nvidia/cuda:"):
            assert stage.image == "nvidia/cuda:${CUDA_TAG}", f"{df.where(stage)}: use nvidia/cuda:${{CUDA_TAG}}"


def test_torch_comes_from_the_cuda_index_before_the_project() -> None:
    installs = pip_installs(TRAINER)
    index = dockerfile(TRAINER).arg("TORCH_INDEX")
    torch = [p for p in installs if any(canonicalize_name(Requirement(r).name) == "torch" for r in _named(p))]
    assert len(torch) == 1, f"{TRAINER}: install torch exactly once, found {[p.where for p in torch]}"
    (p,) = torch
    assert p.option("-i", "--index-url") == [index], f"{p.where}: install torch with --index-url ${{TORCH_INDEX}}"
    (project,) = project_installs(TRAINER)
    assert project.stage is p.stage and p.ins.line < project.ins.line, (
        f"{p.where}: torch must be installed before the project ({project.where}), or pip takes PyPI's build"
    )


def _named(p: PipInstall) -> list[str]:
    return [r for r in p.requirements if not r.startswith(".")]


def test_base_images_are_pinned_to_exact_versions() -> None:
    for rel in IMAGES:
        df = dockerfile(rel)
        for stage, ref in external_images(df):
            where = f"{df.where(stage)}: FROM {stage.image} (= {ref})"
            assert "$" not in ref, f"{where}: an ARG with no default before the first FROM"
            if "@sha256:" in ref:
                continue
            name, _, tag = ref.rpartition(":")
            assert name and "/" not in tag, f"{where}: no tag (that is `latest`)"
            assert tag != "latest" and re.match(r"\d+\.\d+\.\d+(-|$)", tag), (
                f"{where}: pin an exact x.y.z tag (or a digest), not {tag!r}"
            )


def test_build_args_are_declared_in_the_stage_that_uses_them() -> None:
    """A global ARG is empty inside a stage that does not re-declare it (a silent `torch==`)."""
    for rel in IMAGES:
        df = dockerfile(rel)
        for stage in df.stages:
            declared: set[str] = set()
            for ins in stage.body:
                if ins.kind == "ARG":
                    declared.add(split_arg(ins.value)[0])
                    continue
                used = {a or b for a, b in re.findall(r"\$\{(\w+)[^}]*\}|\$(\w+)", ins.value)}
                missing = (used & set(df.global_args)) - declared - set(env_of(stage))
                assert not missing, f"{df.where(ins)}: {ins.kind} uses {sorted(missing)}: add `ARG <name>` to the stage"


# -- users, environment, entrypoint ------------------------------------------------------------------


@pytest.mark.parametrize("rel", IMAGES)
def test_image_ends_as_a_numeric_non_root_user(rel: str) -> None:
    df = dockerfile(rel)
    users = [i for i in df.final.body if i.kind == "USER"]
    assert users, f"{rel}: the final stage has no USER (it would run as root)"
    user = users[-1]
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user.value.strip())
    assert m, f"{df.where(user)}: USER {user.value} must be numeric (uid[:gid]) so runAsNonRoot can verify it"
    uid = int(m.group(1))
    assert uid != 0, f"{df.where(user)}: USER 0 is root"
    assert uid == UIDS[rel], f"{df.where(user)}: USER {uid}, expected {UIDS[rel]}"
    later = [i for i in df.final.body if i.line > user.line and i.kind == "RUN"]
    assert not later, f"{df.where(later[0]) if later else rel}: RUN after the final USER runs as that user"
    useradds = [
        cmd
        for i in df.final.body
        if i.kind == "RUN"
        for cmd in commands(i.value)
        if cmd[0] == "useradd" and any(w in {f"--uid={uid}", str(uid)} for w in cmd)
    ]
    assert useradds, f"{rel}: no `useradd --uid {uid}` in the final stage (Ray and getpass need a passwd entry)"


def test_trainer_user_has_a_writable_home() -> None:
    df = dockerfile(TRAINER)
    cmd = next(c for i in df.final.body if i.kind == "RUN" for c in commands(i.value) if c[0] == "useradd")
    assert {"--create-home", "--home-dir", "/home/ray"} <= set(cmd) and cmd[-1] == "ray", (
        f"{TRAINER}: `{' '.join(cmd)}` must create user ray with its home /home/ray (Ray writes there)"
    )
    workdirs = [i.value for i in df.final.body if i.kind == "WORKDIR"]
    assert workdirs[-1:] == ["/home/ray"], f"{TRAINER}: the final WORKDIR should be /home/ray, not {workdirs}"


def test_trainer_environment() -> None:
    df = dockerfile(TRAINER)
    env = env_of(df.final)
    assert env.get("PYTHONUNBUFFERED") == "1", f"{TRAINER}: final stage needs ENV PYTHONUNBUFFERED=1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{TRAINER}: ENV PATH must start with the venv"
    copied = {words(i.value)[-1] for i in df.final.body if i.kind == "COPY"}
    assert "/opt/venv" in copied, f"{TRAINER}: the final stage does not COPY the venv /opt/venv"


def test_deepspeed_ops_are_built_just_in_time() -> None:
    df = dockerfile(TRAINER)
    (p,) = project_installs(TRAINER)
    env = env_of(Stage(p.stage.image, p.stage.name, p.stage.line, [i for i in p.stage.body if i.line < p.ins.line]))
    assert env.get("DS_BUILD_OPS") == "0", f"{p.where}: set ENV DS_BUILD_OPS=0 before installing DeepSpeed"
    tag = df.arg("CUDA_TAG")
    assert "-devel-" in tag, f"{TRAINER}: ARG CUDA_TAG={tag}: DeepSpeed's just-in-time ops need nvcc (a -devel- base)"
    assert "g++" in apt_packages(df.final), f"{TRAINER}: the final stage needs g++ for DeepSpeed's just-in-time ops"


def test_operator_environment_and_entrypoint() -> None:
    df = dockerfile(OPERATOR)
    env = env_of(df.final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", f"{OPERATOR}: ENV PYTHONDONTWRITEBYTECODE=1 (read-only root)"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{OPERATOR}: ENV PATH must start with the venv"
    last = {i.kind: i for i in df.final.body}
    assert "ENTRYPOINT" in last and json.loads(last["ENTRYPOINT"].value) == ["disney-train-operator"], (
        f'{OPERATOR}: ENTRYPOINT must be the exec form ["disney-train-operator"]'
    )
    assert "CMD" in last and json.loads(last["CMD"].value) == ["run", "--all-namespaces"], (
        f'{OPERATOR}: CMD must be ["run", "--all-namespaces"]'
    )
    script = pyproject()["project"]["scripts"].get("disney-train-operator")
    assert script, "pyproject.toml: no disney-train-operator script for the ENTRYPOINT"


@pytest.mark.parametrize("rel", IMAGES)
def test_no_secrets_in_the_image(rel: str) -> None:
    df = dockerfile(rel)
    secret = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)
    names = set(df.global_args) | {n for s in df.stages for n in [*stage_args(s), *env_of(s)]}
    bad = sorted(n for n in names if secret.search(n))
    assert not bad, f"{rel}: ARG/ENV {bad} look like secrets; credentials come from the pod's Secret at run time"


# -- what each image installs ------------------------------------------------------------------------


def test_trainer_installs_ffmpeg_wget_and_the_train_extra() -> None:
    df = dockerfile(TRAINER)
    apt = apt_packages(df.final)
    assert "ffmpeg" in apt, f"{TRAINER}: the final stage must `apt-get install ffmpeg`"
    assert "wget" in apt, f"{TRAINER}: the final stage needs wget (KubeRay's probes run `wget ... | grep success`)"
    (p,) = project_installs(TRAINER)
    assert p.project_extras == {"train"}, f"{p.where}: install '.[train]', not extras {p.project_extras}"
    assert "decord" in pyproject_closure({"train"}), "pyproject.toml: the train extra no longer brings decord"


def test_operator_installs_only_the_operator_extra() -> None:
    for p in pip_installs(OPERATOR):
        assert p.project_extras == {"operator"} and _named(p) == [], (
            f"{p.where}: the operator image installs '.[operator]' and nothing else, not {p.requirements}"
        )


def pyproject_closure(extras: set[str]) -> set[str]:
    """Names the project's own requirements (with `extras`) list, self-references followed."""
    project = pyproject()["project"]
    return {canonicalize_name(r.name) for r in _project_requirements(project, extras) if r.name != PROJECT}


def _project_requirements(project: dict[str, Any], extras: set[str]) -> list[Requirement]:
    todo, seen, out = set(extras), set[str](), [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                todo |= set(req.extras) - seen
            else:
                out.append(req)
    return out


def image_marker_env(python: str) -> dict[str, str]:
    major_minor = ".".join(python.split(".")[:2])
    return {
        "python_version": major_minor,
        "python_full_version": python,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "extra": "",
    }


def dependency_closure(extras: set[str], python: str) -> set[str]:
    """Every distribution `disney-train[extras]` pulls in on the image's Python (installed metadata)."""
    env = image_marker_env(python)

    def applies(marker: Marker | None, extra: str) -> bool:
        if marker is None:
            return extra == ""
        hit = marker.evaluate({**env, "extra": extra})
        return hit and (extra == "" or not marker.evaluate(env))

    todo: list[tuple[str, str]] = []
    for req in _project_requirements(pyproject()["project"], extras):
        if req.marker is None or req.marker.evaluate(env):
            todo += [(canonicalize_name(req.name), e) for e in ["", *req.extras]]
    seen: set[tuple[str, str]] = set()
    missing: list[str] = []
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for text in requires:
            req = Requirement(text)
            if applies(req.marker, extra):
                todo += [(canonicalize_name(req.name), e) for e in ["", *req.extras]]
    assert not missing, f"not installed here, so the closure cannot be computed: {sorted(set(missing))}"
    return {name for name, _ in seen}


def test_operator_extra_pulls_no_torch_and_no_ray() -> None:
    closure = dependency_closure({"operator"}, python_versions()[OPERATOR])
    heavy = sorted(
        n for n in closure if n in {"torch", "ray", "deepspeed", "triton", "decord"} or n.startswith("nvidia-")
    )
    assert not heavy, f"{OPERATOR}: '.[operator]' pulls {heavy} (its closure: {sorted(closure)})"
    assert {"kopf", "kubernetes", "prometheus-client", "pydantic"} <= closure, (
        f"{OPERATOR}: '.[operator]' should bring kopf, kubernetes, prometheus-client, pydantic: {sorted(closure)}"
    )


def test_train_extra_pulls_torch_ray_and_deepspeed() -> None:
    """The closure walk itself can see torch: the operator check above is not vacuous."""
    closure = dependency_closure({"train"}, python_versions()[TRAINER])
    assert {"torch", "ray", "deepspeed", "decord", "av"} <= closure, sorted(closure)


# -- build context -----------------------------------------------------------------------------------


def dockerignore() -> list[tuple[re.Pattern[str], bool]]:
    """(regex, is_exception) per .dockerignore line, in Docker's (moby patternmatcher) syntax."""
    out: list[tuple[re.Pattern[str], bool]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = str(Path(pattern.lstrip("/"))).rstrip("/") or "."
        out.append((re.compile(_glob_regex(pattern)), exception))
    return out


def _glob_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return out + "$"


def ignored(rel: str, patterns: list[tuple[re.Pattern[str], bool]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parents
    matched = False
    for regex, exception in patterns:
        if exception != matched:
            continue
        if any(regex.match(c) for c in candidates):
            matched = not exception
    return matched


def copy_sources(ins: Instruction) -> list[str]:
    """The build-context sources of a COPY/ADD (none for COPY --from=...)."""
    if ins.kind not in {"COPY", "ADD"}:
        return []
    value = ins.value.strip()
    args = json.loads(value) if value.startswith("[") else words(value)
    flags = [a for a in args if a.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return []
    paths = [a for a in args if not a.startswith("--")]
    return [str(Path(p)) for p in paths[:-1]]


def test_every_copied_file_is_in_the_build_context() -> None:
    patterns = dockerignore()
    for rel in IMAGES:
        df = dockerfile(rel)
        for stage in df.stages:
            for ins in stage.body:
                for src in copy_sources(ins):
                    where = f"{df.where(ins)}: {ins.kind} {src}"
                    path = ROOT / src
                    assert path.exists(), f"{where}: no such file in the repository"
                    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
                    for f in files:
                        name = f.relative_to(ROOT).as_posix()
                        if "__pycache__" in f.parts or f.suffix == ".pyc" or ".egg-info" in name:
                            continue
                        assert not ignored(name, patterns), f"{where}: .dockerignore excludes {name}"


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", ".run/packed/x.tar", "tests/test_images.py", "disney_train/__pycache__/x.pyc"],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path, dockerignore()), f".dockerignore lets {path} into the build context"
