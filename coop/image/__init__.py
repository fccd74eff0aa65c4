"""Images and root filesystems (SPEC §3 IMG, CF-5).

The CLI and daemon use ``coop.image.build``: ``ensure_rootfs`` (coop init /
rebuild), ``rootfs_for`` (session start), ``gc`` and ``status_lines``. The
other modules are the parts: ``reference`` (IMG-1 parsing), ``registry`` +
``auth`` + ``cache`` (IMG-2 pulls), ``layout`` / ``archive`` (local images),
``pull`` (any source -> verified layers), ``layers`` (IMG-3 safe extraction),
``store`` (IMG-5 rootfs per build hash).
"""
