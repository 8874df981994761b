"""The local pool's line (mlyard/tasks/local_line.py): its order, on runs as the worker reads them."""

from mlyard.tasks.local_line import Run, default_places, order


def runs(project: str, user: str, count: int, start: float = 0.0) -> list[Run]:
    return [Run(f"{project}-{user}-{i}", project, user, start + i) for i in range(count)]


def test_one_members_two_hundred_runs_do_not_keep_another_projects_one_waiting():
    flood = runs("vision", "ana", 200)
    late = runs("speech", "bo", 1, start=500.0)
    ranked = [r for r, _ in order(flood + late, holding=[])]
    assert ranked[1] == late[0], "the other project's run takes the second place, not the 201st"
    assert ranked[0] == flood[0] and ranked[2:] == flood[1:], "each member's runs keep their own order"


def test_places_go_to_the_project_holding_fewest_then_to_its_member_holding_fewest():
    holding = runs("vision", "ana", 3) + runs("speech", "bo", 1)
    waiting = runs("vision", "ana", 2, 10) + runs("vision", "cy", 2, 20) + runs("speech", "bo", 2, 30)
    ranked = [r.id for r, _ in order(waiting, holding)]
    # speech holds 1, vision 3: speech twice; then vision's cy (holding none) before ana (holding 3)
    assert ranked[:2] == ["speech-bo-0", "speech-bo-1"]
    assert ranked[2] == "vision-cy-0"


def test_a_project_at_its_quota_is_passed_over_and_says_why():
    holding = runs("vision", "ana", 2)
    waiting = runs("vision", "ana", 3, 10) + runs("speech", "bo", 1, 50)
    ranked = order(waiting, holding, {"vision": 2, "speech": None})
    assert ranked[0] == (waiting[-1], None), "speech goes first: vision's quota of 2 is in use"
    held = [why for run, why in ranked if run.project == "vision"]
    assert len(held) == 3 and all("vision's quota of 2" in why for why in held)


def test_the_default_places_follow_cores_and_memory():
    gib = 1 << 30
    assert default_places(2, 24 * gib) == 4  # two per core
    assert default_places(16, 8 * gib) == 4  # one per 2 GiB
    assert default_places(1, 1 * gib) == 2  # never fewer than 2
