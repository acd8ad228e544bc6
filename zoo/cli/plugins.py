"""``zoo plugins``: what is installed, what it registers, what is disabled or failed."""

from __future__ import annotations

import dataclasses
import json

import click

from zoo import plugins as zoo_plugins
from zoo.cli.common import main


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json):
    """List loaded plugins (distribution, version, hooks), what they register, those disabled by
    ZOO_DISABLE_PLUGINS, and failures."""
    infos = zoo_plugins.plugins()
    regs = {
        k: {n: zoo_plugins.registry(k).source(n) for n in zoo_plugins.registry(k).names()}
        for k in zoo_plugins.KINDS
    }
    fails, off = zoo_plugins.failures(), zoo_plugins.disabled()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [dataclasses.asdict(i) for i in infos],
                    "registered": regs,
                    "disabled": [
                        {"name": i.name, "distribution": i.distribution, "version": i.version}
                        for i in off
                    ],
                    "failures": [dataclasses.asdict(f) for f in fails],
                },
                indent=2,
            )
        )
        return
    for info in infos:
        click.echo(
            f"{info.name}  ({info.distribution} {info.version})  hooks: {', '.join(info.hooks)}"
        )
    for info in off:
        click.echo(f"{info.name}  ({info.distribution} {info.version})  disabled "
                   f"({zoo_plugins.DISABLE_ENV})")
    click.echo()
    for kind, names in regs.items():
        click.echo(f"{kind}: {', '.join(names) or '-'}")
    for f in fails:
        click.echo(f"\nFAILED {f.name} ({f.distribution}): {f.error}")
