"""Who may do what, as plain values: API keys, roles, and which project a call acts in."""

from __future__ import annotations

import pytest

from mlyard.core.access import Actor, new_key, secret_matches, split_key
from mlyard.core.errors import Forbidden, ProjectNotFound, SpecError, TrainingNotFound, Unauthenticated


def test_a_key_is_its_id_and_a_secret_of_which_only_the_hash_is_kept():
    key_id, key, kept = new_key()
    assert key.startswith(f"mly_{key_id}_") and kept not in key and len(kept) == 64
    got_id, secret = split_key(key)
    assert got_id == key_id and secret_matches(secret, kept) and not secret_matches(secret + "x", kept)
    for bad in ("", "Bearer x", f"mly_{key_id}", key[:-1], key.replace("mly_", "myl_"), None):
        with pytest.raises(Unauthenticated) as exc:
            split_key(bad)  # type: ignore[arg-type]
        assert key not in str(exc.value)


def test_roles_decide_and_another_projects_things_do_not_exist():
    alice = Actor("alice", roles={"team-a": "editor", "shared": "viewer"})
    alice.need("team-a", "editor", "starting work", lambda: TrainingNotFound("t"))
    alice.need("team-a", "viewer", "reading", lambda: TrainingNotFound("t"))
    with pytest.raises(Forbidden) as exc:
        alice.need("team-a", "owner", "deleting a template", lambda: TrainingNotFound("t"))
    assert "alice is editor in project 'team-a'" in str(exc.value) and "needs owner" in str(exc.value)
    with pytest.raises(Forbidden, match="alice is viewer in project 'shared'; starting work needs editor"):
        alice.need("shared", "editor", "starting work", lambda: TrainingNotFound("t"))
    with pytest.raises(TrainingNotFound):  # not Forbidden: that would say it exists
        alice.need("team-b", "viewer", "reading", lambda: TrainingNotFound("t"))
    with pytest.raises(TrainingNotFound):  # things from before projects are `default`'s
        alice.need(None, "viewer", "reading", lambda: TrainingNotFound("t"))
    admin = Actor("root", admin=True)
    admin.need("team-b", "owner", "anything", lambda: TrainingNotFound("t"))
    assert admin.projects() is None and alice.projects() == ["shared", "team-a"]


def test_the_project_a_call_acts_in():
    assert Actor("root", admin=True).acting_project() == "default"
    assert Actor("bob", roles={"team-b": "editor"}).acting_project() == "team-b"
    both = Actor("alice", roles={"team-a": "editor", "shared": "viewer"})
    with pytest.raises(SpecError, match="--project or MLYARD_PROJECT"):
        both.acting_project()
    assert both.within("shared").acting_project() == "shared"
    with pytest.raises(ProjectNotFound):
        both.within("team-b").acting_project()
    with pytest.raises(Forbidden, match="carol has no role"):
        Actor("carol").acting_project()


def test_an_identity_providers_groups_grant_roles_and_nothing_else():
    from mlyard.core.access import roles_of_groups

    assert roles_of_groups(["mlyard:team-a:editor", "/mlyard/team-b/viewer", "mlyard:team-a:viewer", "staff",
                            "mlyard:team-c:root", "mlyard:Bad_Name:owner", "other:team-d:owner", ""]) == (
        False, {"team-a": "editor", "team-b": "viewer"})
    assert roles_of_groups(["mlyard:admin"]) == (True, {})
    assert roles_of_groups(["mlyard:admin:extra", "mlyardadmin"]) == (False, {})
