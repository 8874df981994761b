"""Users, keys, projects and the audit trail in a real catalog database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlyard.core.errors import AlreadyExists, Conflict, ProjectNotFound, SpecError, Unauthenticated, UserNotFound
from mlyard.core.specs import TrainingSpec
from mlyard.registry import Templates
from mlyard.registry.teams import Teams

SPEC = TrainingSpec(name="base", source_uri="s3://team/algo", entry_point="train.py")


def test_a_key_signs_its_user_in_with_their_roles_until_it_is_revoked_or_expires(catalog):
    teams = Teams(catalog)
    user, key = teams.create_user("alice", by="root")
    assert user == {"name": "alice", "admin": False, "key_id": key.split("_")[1]}
    teams.create_project("team-a", gpus=1)
    teams.set_member("team-a", "alice", "editor")
    actor = teams.authenticate(key, source="10.0.0.7", project="team-a")
    assert (actor.name, actor.admin, actor.roles, actor.project, actor.source) == (
        "alice", False, {"team-a": "editor"}, "team-a", "10.0.0.7")
    keys = teams.keys("alice")
    assert keys[0]["state"] == "active" and keys[0]["last_used_at"] is not None and "secret_hash" not in keys[0]

    wrong = f"{key[:-4]}AAAA" if not key.endswith("AAAA") else f"{key[:-4]}BBBB"
    second_id, second = teams.add_key("alice", expires_days=1)
    for refused in (wrong, f"mly_{'0' * 12}_{key.split('_', 2)[2]}"):
        with pytest.raises(Unauthenticated):
            teams.authenticate(refused)
    teams.revoke(user["key_id"])
    with pytest.raises(Unauthenticated):  # at once: nothing caches a key
        teams.authenticate(key)
    assert teams.authenticate(second).name == "alice"
    from mlyard.registry.team_tables import ApiKey

    with catalog.session() as s:
        s.get(ApiKey, second_id).expires_at -= timedelta(days=2)
    with pytest.raises(Unauthenticated):
        teams.authenticate(second)
    assert [k["state"] for k in teams.keys("alice")] == ["revoked", "expired"]

    with pytest.raises(AlreadyExists):
        teams.create_user("alice")
    with pytest.raises(SpecError, match="user name"):
        teams.create_user("Alice Smith")
    with pytest.raises(UserNotFound):
        teams.set_member("team-a", "nobody", "viewer")
    with pytest.raises(SpecError, match="role"):
        teams.set_member("team-a", "alice", "superuser")
    with pytest.raises(SpecError, match="expires_days"):
        teams.add_key("alice", expires_days=0)
    assert teams.users()[0]["projects"] == {"team-a": "editor"}


def test_a_project_that_holds_anything_is_not_deleted_and_says_what(catalog):
    teams = Teams(catalog)
    teams.create_project("team-b")
    Templates(catalog).create("b-template", SPEC, project="team-b")
    with pytest.raises(Conflict, match="training template b-template"):
        teams.delete_project("team-b")
    Templates(catalog).delete("b-template")
    with pytest.raises(Conflict, match="run 1234"):  # what else holds it (its running work), as the caller found it
        teams.delete_project("team-b", ["run 1234"])
    teams.delete_project("team-b")
    with pytest.raises(ProjectNotFound):
        teams.project("team-b")
    with pytest.raises(Conflict, match="default"):
        teams.delete_project("default")  # the stack's own, made by the migration
    assert [p["name"] for p in teams.projects()] == ["default"]
    with pytest.raises(SpecError, match="gpus"):
        teams.create_project("team-c", gpus=-1)


def test_the_audit_trail_only_grows_and_filters_by_project_user_and_time(catalog):
    from mlyard.core.access import Actor

    teams = Teams(catalog)
    alice, root = Actor("alice", roles={"team-a": "editor"}, source="10.0.0.7"), Actor("root", admin=True)
    teams.record(root, "project.create", "project team-a", "ok", "team-a")
    teams.record(alice, "run.start", "deployment train/train-local", "ok", "team-a")
    teams.record(alice, "template.delete", "template x", "refused", "team-b", "TemplateNotFound: ...")
    newest = teams.audit()
    assert [r["action"] for r in newest] == ["template.delete", "run.start", "project.create"]
    assert newest[1]["source"] == "10.0.0.7" and newest[0]["result"] == "refused"
    assert [r["action"] for r in teams.audit(projects=["team-b"])] == ["template.delete"]
    assert [r["action"] for r in teams.audit(user="root")] == ["project.create"]
    from mlyard.registry.tables import utcnow

    assert teams.audit(since=utcnow() + timedelta(minutes=1)) == []
