"""Command line (SPEC §11): argument parsing and output formatting only.

Imports stay lazy so that ``coop ls`` starts fast (CLI-1 bench target).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from coop import __version__
from coop.client import ClientError
from coop.paths import Paths, home

DEFAULT_DETACH_KEYS = "ctrl-]"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, told the terminal's width: left to find it, argparse imports
    shutil (with bz2 and lzma), 2-3 ms of every command even without help."""

    def __init__(self, prog: str):
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 0
        super().__init__(prog, width=(columns or 80) - 2)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit 2 (CLI-3)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str):
        raise ClientError(f"{message} (see {self.prog} -h)", 2)


def build_parser(argv: list[str] | None = None) -> Parser:
    """The parser of every command; or, for an ``argv`` that starts with a
    command, of that one alone (building all twenty took 4-5 ms of the 45-60
    of ``coop ls``). ``parse`` reads with the full parser what the lone one
    cannot, so that help and errors come out the same."""
    p = Parser(prog="coop", description="Run AI coding agents in sandboxes, reachable from anywhere.")
    p.add_argument("--version", action="version", version=f"coop {__version__}")
    p.add_argument("--config", metavar="PATH", help="global Coopfile (default ~/.config/coop/default.toml)")
    p.add_argument("--socket", metavar="PATH", help="daemon socket (default ~/.coop/sock, or $COOP_SOCKET)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="print less")
    p.add_argument("-d", "--detach", action="store_true", help="create the session without attaching")
    p.add_argument("-w", "--workspace", metavar="DIR", help="workspace directory (default: current)")
    p.add_argument("-n", "--name", help="session name (default: workspace basename)")
    p.add_argument("--agent", metavar="CMD", help="agent command (overrides [agent].command)")
    p.add_argument("-f", "--file", metavar="PATH", help="project Coopfile (default <workspace>/coop.toml)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="allow a workspace outside your home (SB-3)")
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    only = argv[0] if argv and not argv[0].startswith("-") else None

    def command(name: str, help: str) -> Parser | None:
        return sub.add_parser(name, help=help) if only in (None, name) else None

    if a := command("attach", "attach to a session's PTY"):
        a.add_argument("session", nargs="?")
        a.add_argument("--pty", type=int, default=0)
        a.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS",
                       help="key sequence that detaches (default ctrl-])")
        a.add_argument("--record", action="store_true",
                       help="record this PTY as asciicast v2 (BYD-3)")

    if s := command("shell", "open a new shell PTY in a session"):
        s.add_argument("session", nargs="?")
        s.add_argument("-c", dest="shell_command", metavar="CMD", help="run CMD instead of a shell")
        s.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS")

    if e := command("exec", "run a command in a session without a PTY"):
        e.add_argument("session")
        e.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    if ls := command("ls", "list sessions"):
        ls.add_argument("--json", action="store_true")

    if k := command("kill", "kill a session"):
        k.add_argument("session", nargs="?")
        k.add_argument("--all", action="store_true", help="kill every session")
        k.add_argument("-f", "--force", action="store_true", help="no grace period")

    if sv := command("serve", "serve the web UI (browser, phone on the LAN)"):
        sv.add_argument("-p", "--port", type=int, default=8888)
        sv.add_argument("-H", "--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 for the LAN)")
        sv.add_argument("--token", help="use this token instead of a random one")
        sv.add_argument("--read-only-token", action="store_true",
                        help="also print a watch-only URL")
        sv.add_argument("--tls", action="store_true", help="HTTPS with a kept self-signed certificate")
        sv.add_argument("--stop", action="store_true", help="stop the running web server")

    if tn := command("tunnel", "peer-to-peer access from a phone anywhere (WebRTC)"):
        from coop.tunnel_cli import add_arguments as tunnel_arguments

        tunnel_arguments(tn)

    if www := command("www", "the web page as files"):
        www_sub = www.add_subparsers(dest="www_command", metavar="ACTION", parser_class=Parser,
                                     required=True)
        wx = www_sub.add_parser("export", help="copy the page into DIR (a static site)")
        wx.add_argument("dir")

    if rec := command("rec", "recordings: ls, play, export"):
        rec_sub = rec.add_subparsers(dest="rec_command", metavar="ACTION", parser_class=Parser,
                                     required=True)
        rl = rec_sub.add_parser("ls", help="list a session's recordings")
        rl.add_argument("session")
        rp = rec_sub.add_parser("play", help="replay a recording with its timing")
        rp.add_argument("session")
        rp.add_argument("file", nargs="?", help="recording name (default: the newest)")
        rp.add_argument("--speed", type=float, default=1.0)
        rp.add_argument("--max-idle", type=float, default=None, metavar="S",
                        help="cap pauses at S seconds")
        re_ = rec_sub.add_parser("export", help="copy a session's recordings to a directory")
        re_.add_argument("session")
        re_.add_argument("dest")

    if ini := command("init", "build this Coopfile's rootfs (image, packages, setup)"):
        ini.add_argument("-f", "--file", metavar="PATH", default=argparse.SUPPRESS,
                         help="project Coopfile (default <workspace>/coop.toml)")
        ini.add_argument("--no-cache", action="store_true", help="download every layer again")

    if rb := command("rebuild", "rebuild this Coopfile's rootfs from scratch"):
        rb.add_argument("-f", "--file", metavar="PATH", default=argparse.SUPPRESS,
                        help="project Coopfile (default <workspace>/coop.toml)")
        rb.add_argument("--no-cache", action="store_true", help="download every layer again")
        rb.add_argument("--prune", action="store_true",
                        help="then remove every rootfs no running session uses")

    command("gc", "remove every rootfs no running session uses")
    command("status", "daemon and project status")
    command("shutdown", "stop the daemon (sessions keep running)")

    if lg := command("logs", "show the daemon log or a session's events"):
        lg.add_argument("session", nargs="?")
        lg.add_argument("-f", "--follow", action="store_true")
        lg.add_argument("-n", "--lines", type=int, default=50)
    return p


def parse(argv: list[str]):
    """The options of ``argv``; a bad command line raises ClientError (CLI-3)."""
    try:
        return build_parser(argv).parse_args(argv)
    except ClientError:  # not the command line the lone parser took it for
        return build_parser().parse_args(argv)


# -- helpers ----------------------------------------------------------------


def print_qr(text: str) -> None:
    """A terminal QR code (qrcode package); skipped quietly when unavailable."""
    try:
        import qrcode
    except ImportError:
        return
    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    qr.print_ascii(out=sys.stdout, invert=True)


def load_table(args, workspace: str) -> dict:
    from coop import coopfile

    overrides = {"agent": {"command": args.agent, "args": []}} if args.agent else None
    try:
        loaded = coopfile.load(workspace=workspace, global_path=args.config,
                               project_path=args.file, overrides=overrides)
    except coopfile.CoopfileError as exc:
        raise ClientError(str(exc), 1) from None
    if not args.quiet:
        for w in loaded.warnings:
            print(f"coop: warning: {w}", file=sys.stderr)
    return loaded.table


def human_age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 3600:
        return f"{m}m"
    if s < 86400:
        return f"{h}h {m % 60}m"
    return f"{d}d {h % 24}h"


def tilde(path: str) -> str:
    h = str(home())
    if path == h:
        return "~"
    if path.startswith(h.rstrip("/") + "/"):
        return "~" + path[len(h.rstrip("/")):]
    return path


def clients_text(info: dict) -> str:
    parts = [f"{info.get(k + '_clients', 0)} {k}" for k in ("local", "web", "tunnel")
             if info.get(k + "_clients")]
    return ", ".join(parts) or "-"


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def session_state(info: dict) -> str:
    return info.get("state", "?")


class App:
    def __init__(self, args):
        self.args = args
        self.paths = Paths.default(args.socket)

    def connect(self):
        from coop.client import connect

        return connect(self.paths)

    def resolve_session(self, conn, ref: str | None) -> str:
        """An explicit name/path, else the session bound to the current directory,
        else the only session there is."""
        if ref:
            return ref
        sessions = conn.request({"cmd": "ls"})["sessions"]
        cwd = os.path.realpath(self.args.workspace or os.getcwd())
        for s in sessions:
            if s["workspace"] == cwd:
                return s["name"]
        if len(sessions) == 1:
            return sessions[0]["name"]
        if not sessions:
            raise ClientError("no sessions (start one with: coop)", 3)
        raise ClientError("several sessions; name one (see coop ls)", 3)

    def attach_to(self, conn, request: dict, detach_keys: str) -> int:
        from coop.client import attach, parse_detach_keys, terminal_size

        keys = parse_detach_keys(detach_keys)
        size = terminal_size(sys.stdin.fileno()) or terminal_size(sys.stdout.fileno())
        if size:
            request.update(cols=size[0], rows=size[1])
        answer = conn.request(request)
        return attach(conn, answer.get("session", request.get("session")), keys,
                      quiet=self.args.quiet)

    # -- commands -----------------------------------------------------------

    def cmd_default(self) -> int:
        """DMN-6: attach to this workspace's session, or create one and attach."""
        a = self.args
        workspace = os.path.realpath(a.workspace or os.getcwd())
        if not os.path.isdir(workspace):
            raise ClientError(f"workspace {workspace} is not a directory", 2)
        table = load_table(a, workspace)
        conn = self.connect()
        sessions = conn.request({"cmd": "ls"})["sessions"]
        if a.name:
            existing = [s for s in sessions if s["name"] == a.name]
        else:
            existing = [s for s in sessions if s["workspace"] == workspace]
        created = not existing
        if existing:
            name = existing[0]["name"]
        else:
            request = {"cmd": "create", "workspace": workspace, "coopfile": table,
                       "detach": a.detach, "allow_paths": a.allow_path}
            if a.name:
                request["name"] = a.name
            name = conn.request(request)["session"]
        if a.detach:
            if not a.quiet:
                print(f"session {name} {'created' if created else 'exists'}")
            return 0
        return self.attach_to(conn, {"cmd": "attach", "session": name, "pty": 0}, a.detach_keys)

    def cmd_attach(self) -> int:
        conn = self.connect()
        name = self.resolve_session(conn, self.args.session)
        request = {"cmd": "attach", "session": name, "pty": self.args.pty}
        if self.args.record:
            request["record"] = True
        return self.attach_to(conn, request, self.args.detach_keys)

    def recordings(self, session: str) -> list:
        """Recordings live on disk (they outlive the session): no daemon needed."""
        if "/" in session or session in ("", ".", ".."):
            raise ClientError(f"invalid session name {session!r}", 2)
        folder = self.paths.session_dir(session) / "rec"
        files = sorted(folder.glob("*.cast"), key=lambda p: p.stat().st_mtime) \
            if folder.is_dir() else []
        if not files:
            raise ClientError(f"no recordings for session {session!r} "
                              "(set [session].record = true or use coop attach --record)", 3)
        return files

    def cmd_rec(self) -> int:
        from coop import recording

        a = self.args
        files = self.recordings(a.session)
        if a.rec_command == "ls":
            rows = [["RECORDING", "SIZE", "DURATION", "STARTED"]]
            for f in files:
                header, events = recording.read_cast(f)
                duration = events[-1][0] if events else 0
                rows.append([f.name, f"{f.stat().st_size >> 10} KiB", human_age(duration),
                             time.strftime("%Y-%m-%d %H:%M", time.localtime(header["timestamp"]))])
            print(format_table(rows))
        elif a.rec_command == "play":
            if a.speed <= 0:
                raise ClientError("--speed must be positive", 2)
            chosen = files[-1]
            if a.file:
                matches = [f for f in files if f.name == a.file or f.stem == a.file]
                if not matches:
                    raise ClientError(f"no recording {a.file!r} (see coop rec ls {a.session})", 3)
                chosen = matches[0]
            out = sys.stdout.buffer
            recording.play(chosen, lambda b: (out.write(b), out.flush()), speed=a.speed,
                           max_idle=a.max_idle)
        else:
            import shutil

            dest = os.path.abspath(a.dest)
            os.makedirs(dest, exist_ok=True)
            for f in files:
                shutil.copy2(f, os.path.join(dest, f.name))
            if not a.quiet:
                print(f"exported {len(files)} recording(s) to {dest}")
        return 0

    def cmd_shell(self) -> int:
        conn = self.connect()
        name = self.resolve_session(conn, self.args.session)
        req = {"cmd": "shell", "session": name}
        if self.args.shell_command:
            req["command"] = self.args.shell_command
        return self.attach_to(conn, req, self.args.detach_keys)

    def cmd_exec(self) -> int:
        from coop.client import run_exec

        argv = self.args.argv
        if argv and argv[0] == "--":
            argv = argv[1:]
        if not argv:
            raise ClientError("exec needs a command: coop exec SESSION -- CMD...", 2)
        conn = self.connect()
        conn.request({"cmd": "exec", "session": self.args.session, "argv": argv,
                      "stdin": not os.isatty(sys.stdin.fileno())})
        return run_exec(conn)

    def cmd_ls(self) -> int:
        sessions = self.connect().request({"cmd": "ls"})["sessions"]
        if self.args.json:
            print(json.dumps({"sessions": sessions}, indent=2))
            return 0
        if not sessions:
            if not self.args.quiet:
                print("no sessions")
            return 0
        now = time.time()
        rows = [["SESSION", "WORKSPACE", "STATE", "PTYS", "CLIENTS", "AGE"]]
        for s in sessions:
            rows.append([s["name"], tilde(s["workspace"]), session_state(s), str(len(s["ptys"])),
                         clients_text(s), human_age(now - s["created"])])
        print(format_table(rows))
        return 0

    def cmd_kill(self) -> int:
        conn = self.connect()
        if self.args.all:
            names = [s["name"] for s in conn.request({"cmd": "ls"})["sessions"]]
        else:
            names = [self.resolve_session(conn, self.args.session)]
        for name in names:
            conn.request({"cmd": "kill", "session": name, "force": self.args.force})
            if not self.args.quiet:
                print(f"killed {name}")
        return 0

    # -- rootfs (IMG-4, IMG-5, CF-5) ------------------------------------------

    def project_table(self) -> dict:
        workspace = os.path.realpath(self.args.workspace or os.getcwd())
        if not os.path.isdir(workspace):
            raise ClientError(f"workspace {workspace} is not a directory", 2)
        return load_table(self.args, workspace)

    def rootfs_in_use(self) -> dict[str, list[str]]:
        """Build hash -> names of the running sessions on it (asks the daemon)."""
        users: dict[str, list[str]] = {}
        for s in self.connect().request({"cmd": "ls"})["sessions"]:
            digest = (s.get("launcher") or {}).get("rootfs_hash")
            if digest:
                users.setdefault(digest, []).append(s["name"])
        return users

    def build(self, table: dict, *, force: bool) -> int:
        """Build (``force``: rebuild) the rootfs with progress on stderr (CLI-4)."""
        from coop.image.build import BuildError, ensure_rootfs, rootfs_for
        from coop.image.error import ImageError

        a = self.args
        if not force:
            found = rootfs_for(table, self.paths.state)
            if found is not None:  # the warm path: no sandbox, no daemon
                if not a.quiet:
                    print(f"rootfs up to date ({found.hash[:12]})" if found.hash else
                          'image = "host" with nothing to install: no build needed')
                return 0
        import shutil

        from coop.launcher import LaunchError
        from coop.progress_view import ProgressView
        from coop.sandbox.build import run_step

        def write(text: str) -> None:
            sys.stderr.write(text)
            sys.stderr.flush()

        tty = sys.stderr.isatty()
        view = ProgressView(write, tty=tty, width=shutil.get_terminal_size().columns if tty else 80)
        started = time.monotonic()
        try:
            built = ensure_rootfs(table, self.paths.state, no_cache=a.no_cache, force=force,
                                  progress=(lambda event: None) if a.quiet else view,
                                  run_step=run_step)
        except BuildError as exc:
            view.clear()
            raise ClientError(str(exc), exc.exit_code or 1) from None
        except (ImageError, LaunchError) as exc:
            view.clear()
            raise ClientError(str(exc), 1) from None
        view.clear()
        if not a.quiet:
            print(f"rootfs {built.hash[:12]} built in {time.monotonic() - started:.1f} s")
        return 0

    def cmd_init(self) -> int:
        return self.build(self.project_table(), force=False)

    def cmd_rebuild(self) -> int:
        from coop.coopfile import build_hash, needs_build

        table = self.project_table()
        in_use = self.rootfs_in_use()
        if needs_build(table):
            users = in_use.get(build_hash(table), [])
            if users:
                raise ClientError(f"rootfs {build_hash(table)[:12]} is in use by session "
                                  f"{', '.join(users)}; stop it first (coop kill {users[0]})", 1)
        code = self.build(table, force=needs_build(table))
        if self.args.prune:  # every other rootfs no session uses
            return self.collect(set(in_use) | {build_hash(table)})
        return code

    def cmd_gc(self) -> int:
        return self.collect(set(self.rootfs_in_use()))

    def collect(self, in_use: set[str]) -> int:
        from coop.image.build import gc
        from coop.image.store import RootfsStore

        images = {e.hash: e.meta.get("image", "?") for e in RootfsStore(self.paths.rootfs).list()}
        removed = gc(self.paths.state, in_use)
        if not self.args.quiet:
            for digest in removed:
                print(f"removed rootfs {digest[:12]} ({images.get(digest, '?')})")
            if not removed:
                print("no unused rootfs")
        return 0

    def cmd_status(self) -> int:
        answer = self.connect().request({"cmd": "status"})
        d = answer["daemon"]
        print(f"daemon: running, pid {d['pid']}, version {d['version']}, "
              f"up {human_age(time.time() - d['started'])}")
        print(f"socket: {d['socket']}")
        print(f"sessions: {len(answer['sessions'])}")
        workspace = os.path.realpath(self.args.workspace or os.getcwd())
        project = self.args.file or os.path.join(workspace, "coop.toml")
        print(f"coopfile: {project if os.path.exists(project) else '(none: ' + project + ')'}")
        try:
            table = load_table(self.args, workspace)
        except ClientError as exc:
            print(f"coopfile error: {exc}")
            return 1
        print(f"image: {table['base']['image']}")
        print(f"agent: {' '.join([table['agent']['command'], *table['agent'].get('args', [])])}")
        print(f"network: {table['network']['mode']}")
        try:
            from coop.image.build import status_lines

            for line in status_lines(table, self.paths.state):
                print(line)
        except Exception as exc:  # a broken rootfs store must not hide the rest
            print(f"rootfs: unknown ({exc})")
        for s in answer["sessions"]:
            print(f"session {s['name']}: {s['state']}, actor pid {s['pid']}")
            for key, value in (s.get("launcher") or {}).items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none set"
                print(f"  {key}: {value}")
        return 0

    def cmd_serve(self) -> int:
        a = self.args
        conn = self.connect()
        if a.stop:
            stopped = conn.request({"cmd": "serve_stop"})["stopped"]
            if not a.quiet:
                print("web server stopped" if stopped else "no web server was running")
            return 0
        if not 0 < a.port < 65536:
            raise ClientError(f"invalid port {a.port}", 2)
        req = {"cmd": "serve", "host": a.host, "port": a.port,
               "read_only_token": a.read_only_token, "tls": a.tls}
        if a.token:
            req["token"] = a.token
        info = conn.request(req)
        urls = info.get("urls") or []
        if info.get("already") and not a.quiet:
            print("a web server is already running:")
        for url in urls:
            print(url)
        if info.get("read_only_urls"):
            print("watch-only:")
            for url in info["read_only_urls"]:
                print(url)
        if info.get("fingerprint"):
            print(f"TLS certificate sha256 fingerprint: {info['fingerprint']}")
        lan = [u for u in urls if "127.0.0.1" not in u and "localhost" not in u]
        if urls and not a.quiet:
            print_qr((lan or urls)[0])
        print("Ctrl+C stops the web server (sessions keep running)", flush=True)
        try:
            while conn.sock.recv(4096):  # until the daemon goes away
                pass
        except KeyboardInterrupt:
            self.connect().request({"cmd": "serve_stop"})
            print("\nweb server stopped", file=sys.stderr)
        return 0

    def cmd_tunnel(self) -> int:
        from coop.tunnel_cli import run_tunnel

        return run_tunnel(self)

    def cmd_www(self) -> int:
        from coop.page import ExportError, export_www

        try:
            files = export_www(self.args.dir)
        except (ExportError, OSError) as exc:
            raise ClientError(str(exc), 1) from None
        if not self.args.quiet:
            print(f"exported {len(files)} files to {os.path.abspath(self.args.dir)}")
        return 0

    def cmd_shutdown(self) -> int:
        from coop.client import _try_connect

        sock = _try_connect(str(self.paths.socket))
        if sock is None:
            if not self.args.quiet:
                print("the daemon is not running")
            return 0
        sock.close()
        self.connect().request({"cmd": "shutdown"})
        deadline = time.monotonic() + 10
        while os.path.exists(self.paths.socket) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.args.quiet:
            print("daemon stopped; sessions keep running")
        return 0

    def cmd_logs(self) -> int:
        path = self.paths.daemon_log
        tag = f"[{self.args.session}]" if self.args.session else None
        try:
            f = open(path, "r", encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise ClientError(f"no log yet ({path})", 1) from None
        with f:
            lines = [ln for ln in f if tag is None or tag in ln]
            sys.stdout.write("".join(lines[-self.args.lines:] if self.args.lines > 0 else []))
            sys.stdout.flush()
            while self.args.follow:
                line = f.readline()
                if not line:
                    time.sleep(0.2)
                    continue
                if tag is None or tag in line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = parse(argv)
        app = App(args)
        handler = getattr(app, f"cmd_{args.command or 'default'}")
        return handler()
    except ClientError as exc:
        print(f"coop: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("coop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # CLI-3: one line, traceback only with -v
        if verbose:
            raise
        print(f"coop: internal error: {exc.__class__.__name__}: {exc} (run with -v for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
