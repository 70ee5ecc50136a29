"""`disney-train-operator`: run the operator, print its CRD, or show the RayJob a VideoFineTune becomes."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command("run")
def run(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")] = False,
    peering: Annotated[
        str | None,
        typer.Option("--peering", help="kopf peering object: one active operator among replicas. Default: standalone."),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            "--priority",
            help="Peering priority: the highest live one works, the rest stand by. An integer, or 'oldest' "
            "(earlier start, higher priority: a new replica never preempts the working one, and when that one "
            "goes the next oldest takes over).",
        ),
    ] = None,
    liveness: Annotated[
        str | None, typer.Option("--liveness", help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Reconcile VideoFineTunes into KubeRay RayJobs until stopped."""
    import kopf

    from disney_operator import handlers  # noqa: F401  # registers the handlers
    from disney_operator.settings import settings_from_env

    try:
        settings_from_env()  # refuse bad settings before connecting anywhere
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        rank = _priority(priority)
    except ValueError as err:
        typer.echo(f"error: --priority: {err}", err=True)
        raise typer.Exit(2) from None
    if rank is not None and peering is None:
        typer.echo("error: --priority needs --peering", err=True)
        raise typer.Exit(2)
    # kopf's namespace syntax: globs, negations (!) and lists (,); anything else is a namespace's name
    patterns = not all_namespaces and any(set("*?[!,") & set(n) for n in namespace or ())
    if peering is not None and patterns:
        typer.echo("error: --peering takes named namespaces or --all-namespaces, not patterns", err=True)
        raise typer.Exit(2)
    if not all_namespaces and not namespace:
        typer.echo("error: give --namespace NS (repeatable) or --all-namespaces", err=True)
        raise typer.Exit(2)
    kopf.configure(verbose=verbose)  # kopf's log format, on the root logger
    for quiet in ("kubernetes", "urllib3", "botocore", "boto3"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    from disney_operator.peering import Peering

    # kopf's identity of this replica in the peering object: the pod's name where the chart sets POD_ID
    identity = os.environ.get("POD_ID") or f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}"
    memo = kopf.Memo()
    if peering is not None:
        memo["peering"] = Peering(
            name=peering,
            identity=identity,
            priority=rank or 0,
            namespaces=() if all_namespaces else tuple(namespace or ()),
        )
    settings = kopf.OperatorSettings()
    # Named namespaces only: nothing cluster-wide to observe, so the operator needs no cluster-wide
    # permission (its Roles suffice). All namespaces, or patterns (`vft-*`): kopf watches CRDs (KubeRay
    # installed later is noticed) and, for patterns, namespaces.
    settings.scanning.disabled = not all_namespaces and not patterns
    kopf.run(
        settings=settings,
        standalone=peering is None,
        peering_name=peering,
        priority=rank,
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        memo=memo,
        clusterwide=all_namespaces,
        namespaces=namespace or (),
        liveness_endpoint=liveness,
    )


def _priority(value: str | None, started: float | None = None) -> int | None:
    if value is None:
        return None
    if value == "oldest":
        # microseconds since the epoch, negated: the replica that started first ranks highest; three
        # random digits below them break a tie (kopf pauses every peer of the same priority). Fits int64.
        micros = int((time.time() if started is None else started) * 1_000_000)
        return -(micros * 1000 + secrets.randbelow(1000))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither an integer nor 'oldest'") from None


@app.command("crd")
def crd(
    check: Annotated[
        Path | None, typer.Option("--check", help="Exit 1 when this file differs from the generated CRD.")
    ] = None,
) -> None:
    """Print the VideoFineTune CRD generated from the pydantic models."""
    from disney_operator.crd import crd_yaml

    text = crd_yaml()
    if check is not None:
        if not check.is_file() or check.read_text() != text:
            typer.echo(
                f"{check}: differs from the generated CRD; regenerate it with `disney-train-operator crd`", err=True
            )
            raise typer.Exit(1)
        return
    sys.stdout.write(text)


@app.command("render")
def render(
    vft: Annotated[Path, typer.Argument(help="A VideoFineTune manifest (YAML).")],
    attempt: Annotated[int, typer.Option(help="The attempt to render.")] = 1,
) -> None:
    """Print the ConfigMap (the run configuration), the RayJob and (with DISNEY_OPERATOR_NETWORK_POLICIES)
    the NetworkPolicy the operator would create for a VideoFineTune, as YAML documents (nothing is sent)."""
    from disney_operator.api import VideoFineTuneSpec
    from disney_operator.rayjob import desired
    from disney_operator.settings import settings_from_env

    body = yaml.safe_load(vft.read_text())
    meta = body.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", "00000000-0000-0000-0000-000000000000")
    try:
        spec = VideoFineTuneSpec.model_validate(body.get("spec") or {})
        wanted = desired(body, spec, attempt, settings_from_env())
    except ValueError as err:  # pydantic's ValidationError and SpecError among them
        typer.echo(f"error: {vft}: {err}", err=True)
        raise typer.Exit(2) from None
    objects = [wanted.config_map, wanted.rayjob] + ([wanted.network_policy] if wanted.network_policy else [])
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=120, allow_unicode=True))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
