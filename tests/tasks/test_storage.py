"""Storage against a real S3 API server on 127.0.0.1 (moto server mode) and the local file system."""

import os

import pytest

from mlyard.core.errors import SpecError, StorageNotFound, StorageUnreachable
from mlyard.core.settings import Settings
from mlyard.tasks.storage import SUCCESS_MARKER, Storage


@pytest.fixture()
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.csv").write_text("a\n1\n")
    (src / "b.json").write_text("{}")
    (src / "sub" / "c.csv").write_text("c\n2\n")
    return src


def test_s3_round_trip_with_glob(s3_settings, bucket, tree, tmp_path):
    st = Storage(s3_settings)
    uri = f"s3://{bucket}/data/v1"
    st.upload(tree, uri)
    assert st.list(uri) == ["a.csv", "b.json", "sub/c.csv"]
    assert st.list(uri, "**/*.csv") == ["a.csv", "sub/c.csv"]
    assert st.list(uri, "sub/*") == ["sub/c.csv"]
    got = st.stage_in(uri, tmp_path / "down")
    assert (got / "sub" / "c.csv").read_text() == "c\n2\n"
    assert not (got / SUCCESS_MARKER).exists()
    # a single object
    one = st.stage_in(f"s3://{bucket}/data/v1/a.csv", tmp_path / "one")
    assert one.name == "a.csv" and one.read_text() == "a\n1\n"


def test_obs_uri_uses_its_own_endpoint(s3_settings, bucket, tree):
    endpoint = s3_settings.s3_endpoint_url.removeprefix("http://")
    st = Storage(s3_settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"}))  # s3:// would fail
    st.upload(tree, f"obs://{endpoint}/{bucket}/obs-data")
    assert "a.csv" in st.list(f"obs://{endpoint}/{bucket}/obs-data")


def test_upload_marks_completion_last_and_replaces(s3_settings, bucket, tree):
    import boto3

    st = Storage(s3_settings)
    uri = f"s3://{bucket}/model"
    st.upload(tree, uri)
    s3 = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="model/")["Contents"]]
    assert f"model/{SUCCESS_MARKER}" in keys


def test_missing_and_unreachable_are_told_apart(s3_settings, bucket):
    st = Storage(s3_settings)
    with pytest.raises(StorageNotFound, match="does not exist"):
        st.list(f"s3://{bucket}/nothing-here")
    with pytest.raises(StorageNotFound):
        st.list("s3://no-such-bucket-xyz/a")
    dead = Storage(Settings(s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="x", s3_secret_access_key="y"))
    with pytest.raises(StorageUnreachable, match="cannot reach s3://b/k"):
        dead.list("s3://b/k")


def test_nas_maps_to_mount_root(s3_settings, tmp_path, tree):
    st = Storage(s3_settings)
    st.upload(tree, "nas://nas-1:/shared/data")
    assert (tmp_path / "nas" / "shared" / "data" / "a.csv").exists()
    assert st.list("nas://nas-1:/shared/data", "*.json") == ["b.json"]
    with pytest.raises(SpecError, match="nas-9"):
        st.list("nas://nas-9:/x")


def test_local_upload_is_atomic(tmp_path, tree):
    st = Storage(Settings())
    dest = tmp_path / "out" / "model"
    st.upload(tree, str(dest))
    assert (dest / "a.csv").exists()
    # A copy that fails half-way (an unreadable file) leaves the previous output whole and no temp dir behind.
    bad = tmp_path / "bad"
    (bad / "z").mkdir(parents=True)
    (bad / "first.txt").write_text("x")
    os.symlink(tmp_path / "does-not-exist", bad / "z" / "broken")
    with pytest.raises(OSError):  # the broken link (a StorageError is an OSError too)
        st.upload(bad, f"file://{dest}")
    assert sorted(p.name for p in dest.iterdir()) == ["a.csv", "b.json", "sub"]
    assert [p.name for p in dest.parent.iterdir()] == ["model"]


def test_write_bytes_atomic_local_and_s3(s3_settings, bucket, tmp_path):
    st = Storage(s3_settings)
    st.write_bytes(str(tmp_path / "f.txt"), b"hello")
    assert (tmp_path / "f.txt").read_bytes() == b"hello"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    st.write_bytes(f"s3://{bucket}/f.txt", b"hi")
    assert st.read_bytes(f"s3://{bucket}/f.txt") == b"hi"


def test_fetch_streams_one_file_to_a_local_path_from_either_kind(s3_settings, bucket, tree, tmp_path):
    """A download of a pipeline's outputs writes each file as it comes (copyfile, S3's download in parts)."""
    st = Storage(s3_settings)
    st.fetch(str(tree / "sub" / "c.csv"), tmp_path / "local.csv")
    assert (tmp_path / "local.csv").read_text() == "c\n2\n"
    st.upload(tree, f"s3://{bucket}/fetched")
    st.fetch(f"s3://{bucket}/fetched/a.csv", tmp_path / "remote.csv")
    assert (tmp_path / "remote.csv").read_text() == "a\n1\n"
    with pytest.raises(StorageNotFound):
        st.fetch(str(tree / "gone.csv"), tmp_path / "x")
    with pytest.raises(StorageNotFound):
        st.fetch(f"s3://{bucket}/fetched/gone.csv", tmp_path / "y")
