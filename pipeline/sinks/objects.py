"""Objects in a directory or under s3://bucket/prefix, through Beam's FileSystems (so the
same code writes locally, to S3, or to any filesystem Beam knows)."""

from apache_beam.io.filesystems import FileSystems


def join_path(base: str, name: str) -> str:
    return FileSystems.join(base.rstrip("/"), name) if base else name


def write_object(path: str, body: bytes) -> None:
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(body)


def read_object(path: str):
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()
