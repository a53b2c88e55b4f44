"""A fair expert: it acts only on what the player has observed. The behaviour-cloning teacher for quest.

The exact solver knows where every item is and walks straight to it. A policy cloned from it learns to open the
one right container without any way to know which one is right, and never sees a search or a recovery. The
explorer plays like a careful person instead: while the exact plan would use something the player has not seen
(an item in a container never opened, or a room never entered), it explores, nearest first:

    take keys and task items in sight -> open (or unlock with a key in hand) containers here never looked into
    -> unlock a door to an unvisited room -> walk toward the nearest room with one of those left to do;

and once everything the exact plan uses is known, it follows that plan. Lock colours are visible, so it never
tries a wrong key. Deterministic, and it always wins: each exploring action learns or takes something new (finitely
many), and a solvable game whose reachable places are all explored has a fair plan.
"""

from __future__ import annotations

from epo.envs.quest import solver
from epo.envs.quest.world import World, door_id


def explorer_action(world: World) -> str | None:
    """The fair expert's action in the current state (None once won)."""
    if world.won:
        return None
    plan = solver.plan(world)
    if _is_fair(world, plan):
        return plan[0]
    return _explore(world) or plan[0]


def _is_fair(world: World, plan: list[str]) -> bool:
    """Every room the plan enters has been visited and every item it takes has been seen."""
    sim = world.copy()
    for action in plan:
        if action.startswith("take ") and not world.knows_location(action[5:]):
            return False
        sim.act(action)
        if sim.room not in world.visited:
            return False
    return True


def _todo(world: World, room: int) -> str | None:
    """What exploring would do in `room` (the action is admissible once the player stands there), or None."""
    g = world.game
    held = set(world.held())
    for item, where in world.loc.items():  # keys and task items in sight: on the floor or in an open container
        in_sight = where == room or (
            isinstance(where, str) and where in world.opened and g.containers[where].room == room
        )
        if in_sight and (item.endswith(" key") or item == g.goal_item or item in g.ingredients):
            return f"take {item}"
    for name in g.room_containers[room]:
        if name in world.looked_in:
            continue
        if not world.is_locked_container(name):
            return f"open {name}"
        if g.containers[name].key in held:
            return f"unlock {name} with {g.containers[name].key}"
    for direction, nb in g.exits[room].items():
        door = door_id(room, nb)
        if nb not in world.visited and world.is_locked_door(door) and g.door_keys[door] in held:
            return f"unlock {direction} door with {g.door_keys[door]}"
    return None


def _explore(world: World) -> str | None:
    action = _todo(world, world.room)
    if action is not None:
        return action
    g = world.game
    targets = []  # visited rooms with something to do, and unvisited rooms behind open doors
    for room in world.visited:
        if _todo(world, room) is not None:
            targets.append(room)
        targets += [
            nb
            for nb in g.exits[room].values()
            if nb not in world.visited and not world.is_locked_door(door_id(room, nb))
        ]
    targets = [r for r in targets if r != world.room]
    if not targets:
        return None
    nearest = min(targets, key=lambda r: (g.dist[world.room][r], r))
    return f"go {g.first_step[world.room][nearest]}"
