"""The quest world: a static layout (`Game`) and its mutable state (`World`) with the text interface.

Rooms form a tree on a compass grid. Doors between rooms may be locked; a locked door or container opens with
exactly one key (same colour). Containers are closed at start; items lie on the floor or in containers. Keys are
never used up, nothing can be locked again and nothing is destroyed except crafting ingredients, so every game
stays solvable whatever the agent does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from epo.envs.quest.names import MASS_NOUNS

DIRECTIONS = ("north", "east", "south", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
INVENTORY = -1  # item location: the player's hands; otherwise a room index (floor) or a container name

Door = tuple[int, int]  # (smaller room index, larger room index)
Location = int | str


def door_id(a: int, b: int) -> Door:
    return (a, b) if a < b else (b, a)


def article(name: str) -> str:
    if name in MASS_NOUNS:
        return f"some {name}"
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def join_words(names: list[str]) -> str:
    return ", ".join(article(n) for n in names)


def the_list(names: list[str] | tuple[str, ...]) -> str:
    """['a', 'b', 'c'] -> 'the a, the b and the c'."""
    words = [f"the {n}" for n in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass(frozen=True)
class Container:
    name: str
    room: int
    key: str | None = None  # the key that unlocks it; None: never locked


@dataclass
class Game:
    """Everything fixed for one task id. `items` holds initial locations."""

    task_id: str
    task_type: str  # "fetch" | "craft"
    task: str
    rooms: list[str]
    exits: list[dict[str, int]]  # room -> direction -> neighbour
    door_keys: dict[Door, str]  # locked doors -> key
    containers: dict[str, Container]
    items: dict[str, Location]
    start: int = 0
    goal_item: str = ""  # fetch: put goal_item into target
    target: str = ""
    product: str = ""  # craft: craft product from ingredients at the workbench
    ingredients: tuple[str, ...] = ()
    workbench: int = -1
    # derived tables (see `index`): shortest paths on the room tree
    dist: list[list[int]] = field(default_factory=list)
    first_step: list[list[str]] = field(default_factory=list)  # direction of the first move from a toward b
    room_containers: list[list[str]] = field(default_factory=list)

    def index(self) -> Game:
        n = len(self.rooms)
        self.dist = [[0] * n for _ in range(n)]
        self.first_step = [[""] * n for _ in range(n)]
        for src in range(n):
            seen, queue = {src}, deque([src])
            while queue:
                room = queue.popleft()
                for d, nb in self.exits[room].items():
                    if nb not in seen:
                        seen.add(nb)
                        self.dist[src][nb] = self.dist[src][room] + 1
                        self.first_step[src][nb] = d if room == src else self.first_step[src][room]
                        queue.append(nb)
        self.room_containers = [[c.name for c in self.containers.values() if c.room == r] for r in range(n)]
        return self

    def doors_between(self, a: int, b: int) -> list[Door]:
        """Doors on the (unique) tree path from room a to room b, in walking order."""
        doors = []
        while a != b:
            nxt = self.exits[a][self.first_step[a][b]]
            doors.append(door_id(a, nxt))
            a = nxt
        return doors


class World:
    """Mutable game state plus the text interface: admissible actions, observations, transitions."""

    def __init__(self, game: Game):
        self.game = game
        self.room = game.start
        self.unlocked: set[Door | str] = set()  # door ids and container names
        self.opened: set[str] = set()
        self.loc: dict[str, Location] = dict(game.items)
        self.won = False
        # what the player has observed (for the fair expert): rooms entered, containers ever opened
        self.visited: set[int] = {game.start}
        self.looked_in: set[str] = set()
        self._refresh()

    def copy(self) -> World:
        """An independent copy that shares the immutable Game (for search and tests)."""
        other = World.__new__(World)
        other.game, other.room, other.won = self.game, self.room, self.won
        other.unlocked, other.opened, other.loc = set(self.unlocked), set(self.opened), dict(self.loc)
        other.visited, other.looked_in = set(self.visited), set(self.looked_in)
        other._refresh()  # the action table holds bound methods of its own world
        return other

    # ---- queries -------------------------------------------------------------------------------------------
    def is_locked_door(self, door: Door) -> bool:
        return door in self.game.door_keys and door not in self.unlocked

    def is_locked_container(self, name: str) -> bool:
        return self.game.containers[name].key is not None and name not in self.unlocked

    def held(self) -> list[str]:
        return [item for item, where in self.loc.items() if where == INVENTORY]

    def contents(self, where: Location) -> list[str]:
        return [item for item, w in self.loc.items() if w == where]

    def container_room(self, where: Location) -> int:
        return where if isinstance(where, int) else self.game.containers[where].room

    def knows_location(self, item: str) -> bool:
        """Has the player seen where the item is? (Nothing moves unless the player moves it.)"""
        where = self.loc[item]
        if where == INVENTORY:
            return True
        return where in self.visited if isinstance(where, int) else where in self.looked_in

    # ---- text ----------------------------------------------------------------------------------------------
    def describe(self) -> str:
        g, r = self.game, self.room
        seen = []
        for name in g.room_containers[r]:
            if self.is_locked_container(name):
                seen.append(f"a locked {name} ({g.containers[name].key.split()[0]} lock)")
            elif name in self.opened:
                inside = self.contents(name)
                seen.append(f"an open {name} ({'holding ' + join_words(inside) if inside else 'empty'})")
            else:
                seen.append(f"a closed {name}")
        if g.workbench == r:
            seen.append("a workbench")
        seen += [article(item) for item in self.contents(r)]
        exits = []
        for d, nb in g.exits[r].items():
            door = door_id(r, nb)
            locked = self.is_locked_door(door)
            exits.append(f"{d} (locked {g.door_keys[door].split()[0]} door)" if locked else f"{d} to the {g.rooms[nb]}")
        things = f"You see {', '.join(seen)}." if seen else "You see nothing of interest."
        return f"You are in the {g.rooms[r]}. {things} Exits: {', '.join(exits)}."

    # ---- actions -------------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Recompute the admissible actions; each maps to (handler, args)."""
        g, r = self.game, self.room
        acts: dict[str, tuple] = {"look": (self._look,), "inventory": (self._inventory,)}
        held = self.held()
        keys = [item for item in held if item.endswith(" key")]
        for d, nb in g.exits[r].items():
            door = door_id(r, nb)
            if self.is_locked_door(door):
                for key in keys:
                    acts[f"unlock {d} door with {key}"] = (self._unlock_door, door, key)
            else:
                acts[f"go {d}"] = (self._go, nb, d)
        for item in self.contents(r):
            acts[f"take {item}"] = (self._take, item)
        for name in g.room_containers[r]:
            if name in self.opened:
                for item in self.contents(name):
                    acts[f"take {item}"] = (self._take, item)
                acts[f"close {name}"] = (self._close, name)
            elif self.is_locked_container(name):
                for key in keys:
                    acts[f"unlock {name} with {key}"] = (self._unlock_container, name, key)
            else:
                acts[f"open {name}"] = (self._open, name)
        for name in g.room_containers[r]:
            if name in self.opened:
                for item in held:
                    acts[f"put {item} in {name}"] = (self._put, item, name)
        if g.workbench == r and all(self.loc.get(i) == INVENTORY for i in g.ingredients):
            acts[f"craft {g.product}"] = (self._craft,)
        self.actions = acts

    def act(self, action: str) -> tuple[str, bool]:
        """Apply an action; returns (observation, valid). Invalid actions change nothing."""
        entry = self.actions.get(" ".join(action.lower().split()))
        if self.won:
            return "The game is over.", False
        if entry is None:
            return f"You can't do that: '{action}' is not an available action. {self.describe()}", False
        feedback = entry[0](*entry[1:])
        self._refresh()
        win = " You have completed the task!" if self.won else ""
        return f"{feedback}{win} {self.describe()}", True

    def _look(self) -> str:
        return "You look around."

    def _inventory(self) -> str:
        held = self.held()
        return f"You carry {join_words(held)}." if held else "You carry nothing."

    def _go(self, room: int, direction: str) -> str:
        self.room = room
        self.visited.add(room)
        return f"You go {direction}."

    def _take(self, item: str) -> str:
        self.loc[item] = INVENTORY
        return f"You take the {item}."

    def _open(self, name: str) -> str:
        self.opened.add(name)
        self.looked_in.add(name)
        return f"You open the {name}."

    def _close(self, name: str) -> str:
        self.opened.discard(name)
        return f"You close the {name}."

    def _unlock_door(self, door: Door, key: str) -> str:
        if self.game.door_keys[door] != key:
            return f"The {key} does not fit this door."
        self.unlocked.add(door)
        return f"You unlock the door with the {key} and open it."

    def _unlock_container(self, name: str, key: str) -> str:
        if self.game.containers[name].key != key:
            return f"The {key} does not fit the {name}."
        self.unlocked.add(name)
        return f"You unlock the {name} with the {key}."

    def _put(self, item: str, name: str) -> str:
        self.loc[item] = name
        self.won = self.game.task_type == "fetch" and item == self.game.goal_item and name == self.game.target
        return f"You put the {item} in the {name}."

    def _craft(self) -> str:
        g = self.game
        for item in g.ingredients:
            del self.loc[item]
        self.loc[g.product] = INVENTORY
        self.won = g.task_type == "craft"
        return f"You craft {article(g.product)} from {the_list(g.ingredients)}."
