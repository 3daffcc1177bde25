"""The `inmesh lab` sub-commands (wiring only: parse arguments, build settings, call run).

The lab modules are imported inside each command: every process (`inmesh agent`, `inmesh
ztunnel`) loads this file, and none of them should pay for, or depend on, the lab.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from inmesh.errors import ConfigError, InmeshError, NotFoundError
from inmesh.identity import DEFAULT_TRUST_DOMAIN

if TYPE_CHECKING:
    from inmesh.lab.lab import Lab

DEFAULT_ROOT = "/run/inmesh/lab"
ROOT_ENV = "INMESH_LAB_ROOT"
BACKENDS = ("auto", "iptables", "nftables")
WIDE = 140
"""Columns of the status and demo tables when the output is not a terminal (a file, a pipe)."""

lab_app = typer.Typer(
    name="lab",
    help="A local lab: nodes and pods in network namespaces, and the demo.",
    no_args_is_help=True,
)
pod_app = typer.Typer(name="pod", help="Create, delete and enter pods.", no_args_is_help=True)
label_app = typer.Typer(name="label", help="Label pods and namespaces.", no_args_is_help=True)
lab_app.add_typer(pod_app)
lab_app.add_typer(label_app)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Root = Annotated[
    str,
    typer.Option("--root", envvar=ROOT_ENV, help="Lab directory.", show_default=True),
]
Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Pod namespace.")]
Backend = Annotated[
    str, typer.Option("--backend", help=f"Redirect rules backend: {', '.join(BACKENDS)}.")
]


@contextmanager
def _errors() -> Iterator[None]:
    """One red line and a non-zero exit for every inmesh error: 2 for bad input, 1 otherwise."""
    try:
        yield
    except (ConfigError, NotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except InmeshError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def _reporter() -> Callable[[str], None]:
    return lambda msg: out.print(f"  {msg}", highlight=False)


def _wide() -> Console:
    return out if out.is_terminal else Console(width=WIDE, soft_wrap=True)


def _lab(root: str, report: Callable[[str], None] | None = None) -> Lab:
    from inmesh.lab.lab import Lab

    return Lab(root, report=report) if report else Lab(root)


@lab_app.command("up")
def up(
    root: Root = DEFAULT_ROOT,
    nodes: Annotated[int, typer.Option("--nodes", help="Number of nodes.")] = 1,
    backend: Backend = "auto",
    node_prefix: Annotated[
        str, typer.Option("--node-prefix", help="Nodes are named PREFIX1..PREFIXN.")
    ] = "node",
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="SPIFFE trust domain (fixed at the first up).")
    ] = DEFAULT_TRUST_DOMAIN,
    mtls: Annotated[
        bool,
        typer.Option(
            "--mtls/--no-mtls",
            help="Run a control plane so mesh pods talk HBONE (mTLS); --no-mtls makes a"
            " plaintext lab: in-pod redirection only (fixed at the first up).",
        ),
    ] = True,
) -> None:
    """Create the lab (or repair it): the control plane, then per node its netns, CNI config,
    node credential, agent and ztunnel; several nodes are linked through a fabric netns."""
    actions: list[str] = []
    report = _reporter()

    def note(msg: str) -> None:
        actions.append(msg)
        report(msg)

    with _errors():
        state = _lab(root, note).up(
            nodes=nodes,
            backend=backend,
            node_prefix=node_prefix,
            trust_domain=trust_domain,
            mtls=mtls,
        )
    names = ", ".join(sorted(state.nodes))
    fixed = "" if actions else " (nothing was missing)"
    plane = (
        f"control plane on {state.controlplane_target}"
        if state.controlplane_target
        else "plaintext (no control plane)"
    )
    out.print(f"[green]lab up[/] at {root}: {plane}, nodes {names} ready{fixed}", highlight=False)


@lab_app.command("down")
def down(root: Root = DEFAULT_ROOT) -> None:
    """Tear the lab down: pods, processes, namespaces, files. Safe to repeat."""
    with _errors():
        result = _lab(root, _reporter()).down()
    for problem in result.problems:
        err.print(f"[yellow]warning:[/] {problem}", highlight=False)
    out.print("lab down" if result.existed else f"no lab at {root}", highlight=False)


@lab_app.command("status")
def status(
    root: Root = DEFAULT_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Control plane, nodes and pods, read live from the processes themselves."""
    with _errors():
        report = _lab(root).status()
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        from inmesh.lab.render import render_status

        render_status(report, _wide())


@pod_app.command("add")
def pod_add(
    name: str,
    root: Root = DEFAULT_ROOT,
    namespace: Namespace = "default",
    sa: Annotated[str, typer.Option("--sa", help="Service account.")] = "default",
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE (repeatable).")
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Node (default: least busy).")] = None,
) -> None:
    """Create a pod: store entry, netns, CNI ADD on its node."""
    from inmesh.lab.labels import parse_labels
    from inmesh.lab.pods import PodSpec

    with _errors():
        labels = parse_labels(label or [])
        pod = _lab(root).add_pod(PodSpec(name, namespace, sa, labels, node))
    out.print(
        f"pod {pod.namespace}/{pod.name} on {pod.node}: {', '.join(pod.ips)} (uid {pod.uid})",
        highlight=False,
    )


@pod_app.command("del")
def pod_del(name: str, root: Root = DEFAULT_ROOT, namespace: Namespace = "default") -> None:
    """Delete a pod: store entry (the agent un-enrolls it), CNI DEL, netns."""
    with _errors():
        _lab(root).delete_pod(namespace, name)
    out.print(f"pod {namespace}/{name} deleted", highlight=False)


@pod_app.command("exec")
def pod_exec(
    name: str,
    command: Annotated[list[str], typer.Argument(help="Command to run (after --).")],
    root: Root = DEFAULT_ROOT,
    namespace: Namespace = "default",
) -> None:
    """Run a command in the pod's network namespace; its exit code is passed through."""
    with _errors():
        argv = _lab(root).exec_argv(namespace, name, command)
    code = subprocess.run(argv, check=False).returncode
    raise typer.Exit(code)


@label_app.command("pod")
def label_pod(
    name: str,
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove.")],
    root: Root = DEFAULT_ROOT,
    namespace: Namespace = "default",
) -> None:
    """Set or remove labels on a pod (the agent reacts to ambient labels)."""
    from inmesh.lab.labels import parse_label_ops

    with _errors():
        result = _lab(root).label_pod(namespace, name, parse_label_ops(labels))
    out.print(f"pod {namespace}/{name} labels: {_fmt(result)}", highlight=False)


@label_app.command("namespace")
def label_namespace(
    name: str,
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove.")],
    root: Root = DEFAULT_ROOT,
) -> None:
    """Set or remove labels on a namespace."""
    from inmesh.lab.labels import parse_label_ops

    with _errors():
        result = _lab(root).label_namespace(name, parse_label_ops(labels))
    out.print(f"namespace {name} labels: {_fmt(result)}", highlight=False)


@lab_app.command("demo")
def demo(
    root: Root = DEFAULT_ROOT,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab running.")] = False,
    backend: Backend = "auto",
    node_prefix: Annotated[str, typer.Option("--node-prefix", help="Node name prefix.")] = "node",
) -> None:
    """Build a two-node lab and show, from kernel, proxy and wire evidence, what the mesh
    captures and that mesh traffic between nodes is mutual TLS (HBONE on port 15008)."""
    from inmesh.lab.demo import run_demo

    console = _wide()
    with _errors():
        ok = run_demo(root, backend=backend, keep=keep, console=console, node_prefix=node_prefix)
    raise typer.Exit(0 if ok else 1)


def _fmt(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def register(app: typer.Typer) -> None:
    """Add `inmesh lab` to the root app."""
    app.add_typer(lab_app)
