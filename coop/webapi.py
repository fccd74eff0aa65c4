"""The web server's JSON API (WEB-4, WEB-5, BYD-8): HTTP requests in, IPC requests out.

Sessions belong to the supervisor and the session actors (one owner per
state): every answer here is asked for, nothing is cached. Errors keep the
IPC error code and get the matching HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

from coop import coopfile, fdpass, protocol, recstore, uploads
from coop.http import Request
from coop.paths import Paths, home
from coop.protocol import ErrorCode, ProtocolError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # session names (DMN-5)
MAX_DIRS = 2000
CREATE_TIMEOUT = 120.0
ASK_TIMEOUT = 30.0

ROUTES = {  # path shape → methods (HEAD is served as GET)
    ("sessions",): ("GET", "POST"),
    ("sessions", "NAME"): ("DELETE",),
    ("sessions", "NAME", "shell"): ("POST",),
    ("sessions", "NAME", "upload"): ("POST",),
    ("sessions", "NAME", "recordings"): ("GET",),
    ("sessions", "NAME", "recordings", "FILE"): ("GET",),
    ("dirs",): ("GET",),
}
# what a read-only viewer may ask (BYD-4): the list, and recordings to watch (BYD-3)
READ_ONLY_ROUTES = {("sessions",), ("sessions", "NAME", "recordings"),
                    ("sessions", "NAME", "recordings", "FILE")}

STATUS = {
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.PTY_NOT_FOUND: 404,
    ErrorCode.SESSION_EXISTS: 409,
    ErrorCode.INVALID_COMMAND: 400,
    ErrorCode.INVALID_COOPFILE: 400,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.ROOTFS_NOT_BUILT: 409,
}


TUNNEL_ANSWER = "/api/tunnel/answer"  # public: guarded by the tunnel's secret (TUN-3)
MAX_CODE = 4096  # an answer code or a secret longer than this is not one


def status_for(answer: dict, ok_status: int = 200) -> int:
    if answer.get("ok"):
        return ok_status
    try:
        return STATUS.get(ErrorCode(answer.get("error")), 500)
    except ValueError:
        return 500


@dataclass
class Download:
    """An answer that is a file, not JSON (a recording, BYD-3)."""

    body: bytes
    content_type: str
    filename: str


def route_of(segments: list[str]) -> tuple[str, ...]:
    """The ROUTES key of a path: the session name becomes NAME, a recording's file FILE."""
    shape = list(segments)
    if len(shape) > 1:
        shape[1] = "NAME"
    if len(shape) > 3 and shape[2] == "recordings":
        shape[3] = "FILE"
    return tuple(shape)


class ApiError(ProtocolError):
    """An API request refused before anything was asked; carries its HTTP status."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None):
        super().__init__(code, message)
        self.status = status or STATUS.get(code, 500)


async def ask_daemon(paths: Paths, msg: dict, timeout: float = ASK_TIMEOUT) -> dict:
    """One command to the supervisor over its socket, handshake first (IPC-3)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(paths.socket)), 5)
    except (TimeoutError, OSError):
        raise ApiError(ErrorCode.INTERNAL, "the coop daemon is not reachable", 503) from None
    try:
        writer.write(protocol.encode_message(protocol.hello()) + protocol.encode_message(msg))
        decoder, answers = protocol.FrameDecoder(), []
        while len(answers) < 2:
            data = await asyncio.wait_for(reader.read(1 << 16), timeout)
            if not data:
                raise ApiError(ErrorCode.INTERNAL, "the coop daemon closed the connection", 503)
            answers += [protocol.decode_json(p) for p in decoder.feed(data)]
            if answers and not answers[0].get("ok"):
                return answers[0]
        return answers[1]
    except TimeoutError:
        raise ApiError(ErrorCode.INTERNAL, "the coop daemon did not answer in time", 504) from None
    finally:
        writer.close()


def session_name(segment: str) -> str:
    if not NAME_RE.match(segment):
        raise ApiError(ErrorCode.SESSION_NOT_FOUND, f"no session {segment!r}")
    return segment


def json_body(request: Request) -> dict:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError) as exc:  # SEC-4: nesting deeper than the C parser goes
        raise ApiError(ErrorCode.INVALID_COMMAND, f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.INVALID_COMMAND, "the body must be a JSON object")
    return body


def under_home(path: str) -> str:
    """A user-given path: relative and ``~`` paths are under the home directory."""
    base = str(home())
    if path == "~" or path.startswith("~/"):
        path = path[2:]
    return os.path.realpath(os.path.join(base, path))


def create_request(workspace, name) -> dict:
    """The IPC ``create`` for a browser's or a phone's request, like ``coop -d`` run
    in that workspace (its Coopfile layers apply); paths are under the home."""
    if not isinstance(workspace, str) or not workspace:
        raise ApiError(ErrorCode.INVALID_COMMAND, "workspace: a directory path is required")
    if name is not None and not isinstance(name, str):
        raise ApiError(ErrorCode.INVALID_COMMAND, "name must be a string")
    path = under_home(workspace)
    if not os.path.isdir(path):
        raise ApiError(ErrorCode.INVALID_COMMAND, f"workspace {path} is not a directory")
    try:
        table = coopfile.load(workspace=path).table
    except coopfile.CoopfileError as exc:
        raise ApiError(ErrorCode.INVALID_COOPFILE, str(exc)) from None
    msg = {"cmd": "create", "workspace": path, "coopfile": table, "detach": True}
    if name:
        msg["name"] = name
    return msg


def list_dirs(path: str | None) -> dict:
    """WEB-5 directory browser: subdirectories under the user's home only, symlinks
    resolved and checked, hidden ones last."""
    root = os.path.realpath(home())
    target = under_home(path or "")
    if target != root and not target.startswith(root.rstrip("/") + "/"):
        raise ApiError(ErrorCode.PERMISSION_DENIED, "only directories under your home are listed")
    try:
        entries = list(os.scandir(target))
    except FileNotFoundError:
        raise ApiError(ErrorCode.INVALID_COMMAND, f"{target} does not exist") from None
    except NotADirectoryError:
        raise ApiError(ErrorCode.INVALID_COMMAND, f"{target} is not a directory") from None
    except PermissionError:
        raise ApiError(ErrorCode.PERMISSION_DENIED, f"{target} is not readable") from None
    dirs = []
    for entry in entries:
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        real = os.path.realpath(entry.path)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            dirs.append(entry.name)
    dirs.sort(key=lambda name: (name.startswith("."), name.casefold()))
    return {"ok": True, "path": target, "home": root,
            "parent": os.path.dirname(target) if target != root else None,
            "dirs": dirs[:MAX_DIRS], "truncated": len(dirs) > MAX_DIRS}


class Api:
    def __init__(self, paths: Paths):
        self.paths = paths

    async def handle(self, request: Request, segments: list[str], read_only: bool,
                     upload: BinaryIO | None) -> tuple[int, dict | Download]:
        """(status, answer) for an authorised request to ``/api/<segments>``; a read-only
        viewer may only list sessions and watch recordings (BYD-4)."""
        method = "GET" if request.method == "HEAD" else request.method
        route = route_of(segments)
        if route not in ROUTES:
            raise ApiError(ErrorCode.INVALID_COMMAND, "no such API route", 404)
        if method not in ROUTES[route]:
            raise ApiError(ErrorCode.INVALID_COMMAND, f"{request.method} is not allowed here", 405)
        if read_only and not (route in READ_ONLY_ROUTES and method == "GET"):
            raise ApiError(ErrorCode.PERMISSION_DENIED, "this link is read-only")
        name = session_name(segments[1]) if len(segments) > 1 else ""
        if route[2:3] == ("recordings",):
            return 200, await self.recordings(name, segments[3] if len(segments) > 3 else None)
        if route == ("sessions",) and method == "GET":
            answer = await ask_daemon(self.paths, {"cmd": "ls"})
            return status_for(answer), {**answer, "read_only": read_only}
        if route == ("sessions",):
            return await self.create(json_body(request))
        if route == ("sessions", "NAME"):
            force = request.query.get("force") in ("1", "true")
            answer = await ask_daemon(self.paths, {"cmd": "kill", "session": name, "force": force},
                                      timeout=60)
            return status_for(answer), answer
        if route == ("sessions", "NAME", "shell"):
            return await self.shell(name, json_body(request))
        if route == ("sessions", "NAME", "upload"):
            return await self.upload(name, request, upload)
        return 200, await asyncio.to_thread(list_dirs, request.query.get("path"))

    async def create(self, body: dict) -> tuple[int, dict]:
        msg = await asyncio.to_thread(create_request, body.get("workspace"), body.get("name"))
        answer = await ask_daemon(self.paths, msg, timeout=CREATE_TIMEOUT)
        return status_for(answer, 201), answer

    async def session(self, name: str) -> dict:
        """The session's ``ls`` entry; SESSION_NOT_FOUND when there is none."""
        answer = await ask_daemon(self.paths, {"cmd": "ls"})
        for info in answer.get("sessions") or []:
            if info.get("name") == name:
                return info
        raise ApiError(ErrorCode.SESSION_NOT_FOUND, f"no session {name!r}")

    async def recordings(self, name: str, file: str | None) -> dict | Download:
        """BYD-3: a session's recordings from disk (they outlive the session), or one of
        them as asciicast v2."""
        try:
            if file is None:
                found = await asyncio.to_thread(recstore.list_recordings, self.paths.state, name)
                return {"ok": True, "recordings": found}
            body = await asyncio.to_thread(recstore.read_recording, self.paths.state, name, file)
        except recstore.RecordingNotFound as exc:
            raise ApiError(ErrorCode.SESSION_NOT_FOUND, str(exc)) from None
        return Download(body, "application/x-asciicast", file)

    async def shell(self, name: str, body: dict) -> tuple[int, dict]:
        await self.session(name)
        msg = {"cmd": "spawn_shell"}
        if isinstance(body.get("command"), str) and body["command"]:
            msg["command"] = body["command"]
        try:
            answer = await fdpass.ask(str(self.paths.actor_socket(name)), msg, timeout=ASK_TIMEOUT)
        except (TimeoutError, OSError):
            raise ApiError(ErrorCode.SESSION_NOT_FOUND, f"session {name!r} is gone") from None
        return status_for(answer, 201), answer

    async def upload(self, name: str, request: Request, upload: BinaryIO | None) -> tuple[int, dict]:
        """BYD-8: the raw body into ``<workspace>/.coop-uploads/``; answers the path the
        agent sees inside its sandbox."""
        filename = request.query.get("filename") or "upload"
        info = await self.session(name)
        workspace = info["workspace"]
        if upload is None:
            raise ApiError(ErrorCode.INVALID_COMMAND, "empty upload")
        upload.seek(0)
        try:
            stored = await asyncio.to_thread(uploads.store, workspace, filename, upload)
        except uploads.UploadError as exc:
            raise ApiError(ErrorCode.PERMISSION_DENIED, str(exc)) from None
        inside = info.get("workdir") or workspace  # where the session sees its workspace
        return 201, {"ok": True, "path": f"{inside.rstrip('/')}/{uploads.UPLOAD_DIR}/{stored}",
                     "name": stored, "size": upload.tell()}


async def tunnel_answer(paths: Paths, request: Request) -> tuple[int, dict]:
    """TUN-3: ``{answer, secret}`` from the connect page to the waiting tunnel whose
    one-time secret it is; any other secret is PERMISSION_DENIED (403)."""
    body = json_body(request)
    code, secret = body.get("answer"), body.get("secret")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_CODE for v in (code, secret)):
        raise ApiError(ErrorCode.INVALID_COMMAND, "answer and secret: the codes from the connect page")
    answer = await ask_daemon(paths, {"cmd": "tunnel_answer", "answer": code, "secret": secret})
    return status_for(answer), answer
