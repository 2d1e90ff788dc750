# Item 7 of benches/run: the same 10 tasks as ferry/playbook.toml, for pyinfra (run with
# --parallel 50). Every path is under the host's own `root` (host data).
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, server

FLEET = Path(__file__).resolve().parent.parent
root = host.data.root

files.directory(name="Config directory", path=f"{root}/etc/app", mode="755")
files.directory(name="Log directory", path=f"{root}/log", mode="750")
files.put(name="Main config", src=str(FLEET / "files/app.conf"), dest=f"{root}/etc/app/app.conf", mode="644")
files.put(name="Message of the day", src=StringIO("Managed by the fleet benchmark.\n"), dest=f"{root}/etc/motd", mode="644")
files.template(
    name="Host config",
    src=str(FLEET / "templates/host.conf.j2"),
    dest=f"{root}/etc/app/host.conf",
    mode="640",
    inventory_hostname=host.name,
    root=root,
)
files.line(name="Allow loopback", path=f"{root}/etc/app/hosts.allow", line="^allow 127.0.0.1$")
files.line(name="Environment", path=f"{root}/etc/app/env", line="^APP_ENV=.*$", replace="APP_ENV=production")
files.link(name="Current config link", path=f"{root}/etc/app/current", target=f"{root}/etc/app/app.conf")
# pyinfra's shell has no `creates`: the guard is in the command, as a pyinfra user writes it.
server.shell(
    name="Initialise data",
    commands=[f"test -e {root}/data/initialized || {{ mkdir -p {root}/data && echo initialized > {root}/data/initialized; }}"],
)
server.shell(name="Check config", commands=[f"test -s {root}/etc/app/app.conf"])
