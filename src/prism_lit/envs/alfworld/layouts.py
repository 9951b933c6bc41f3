"""Household vocabulary and room layouts for the procedural ALFWorld generator.

A *layout* is one room (an ALFRED "floor plan"): its receptacles, where they stand, and the fixed desk lamp of
bedrooms and living rooms. Games place objects in a layout and pick a task. Which receptacle can hold which
object, and which objects can be heated / cooled / cleaned, come from ALFRED's own tables in
``alfworld.gen.constants`` (passed in as ``can_contain`` / ``affordances``), so generated games obey the same
rules as the real dataset; the room vocabulary below (what a kitchen holds) is ours.

Held-out object kinds (:data:`UNSEEN_KINDS`) never appear in ``train`` / ``valid_seen`` games and are the
targets of ``valid_unseen`` games, whose layouts are also drawn apart from the training layouts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ROOM_TYPES = ("kitchen", "bathroom", "bedroom", "livingroom")

# ALFRED's TASK -> rooms where it occurs (alfworld.gen.constants.GOALS_VALID, lower-cased room names).
TASK_ROOMS = {
    "pick_and_place_simple": ROOM_TYPES,
    "look_at_obj_in_light": ("bedroom", "livingroom"),
    "pick_clean_then_place_in_recep": ("kitchen", "bathroom"),
    "pick_heat_then_place_in_recep": ("kitchen",),
    "pick_cool_then_place_in_recep": ("kitchen",),
    "pick_two_obj_and_place": ROOM_TYPES,
}
TASK_TYPES = tuple(TASK_ROOMS)

# The appliance each state-change task needs, and which receptacle type performs it.
TASK_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
TASK_AFFORDANCE = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}

OPENABLE_RECEPTACLES = frozenset({"Fridge", "Cabinet", "Microwave", "Drawer", "Safe"})
LAMP_HOLDERS = ("Desk", "SideTable", "Dresser")
LAMP_KIND = "DeskLamp"
# Objects that are themselves ALFRED receptacle objects (flagged ``isReceptacleObject`` in ALFWorld problems).
RECEPTACLE_OBJECTS = frozenset({"Mug", "Cup", "Bowl", "Plate", "Pan", "Pot"})

UNSEEN_KINDS = frozenset({"Cup", "Tomato", "Ladle", "Spatula", "PepperShaker", "Cloth", "Candle", "CD", "Watch",
                          "Vase", "Pencil"})


@dataclass(frozen=True)
class RoomSpec:
    """What a room type contains.

    Attributes:
        anchors: receptacle types every layout of this room has (appliances its tasks need; the lamp holder).
        optional: other receptacle types, with the most instances one layout may have.
        objects: object kinds found in this room.
        homes: typical receptacle types per object kind; objects go there with probability ``home_prob``.
    """

    anchors: tuple[str, ...]
    optional: dict[str, int]
    objects: tuple[str, ...]
    homes: dict[str, tuple[str, ...]] = field(default_factory=dict)


ROOMS: dict[str, RoomSpec] = {
    "kitchen": RoomSpec(
        anchors=("Fridge", "Microwave", "SinkBasin", "CounterTop"),
        optional={"Cabinet": 3, "Drawer": 3, "DiningTable": 1, "StoveBurner": 2, "Shelf": 2, "GarbageCan": 1,
                  "CoffeeMachine": 1, "SideTable": 1, "CounterTop": 2},
        objects=("Apple", "Bread", "Potato", "Tomato", "Egg", "Lettuce", "Mug", "Cup", "Bowl", "Plate", "Pan",
                 "Pot", "Knife", "ButterKnife", "Fork", "Spoon", "Spatula", "Ladle", "Kettle", "DishSponge",
                 "SaltShaker", "PepperShaker", "WineBottle"),
        homes={"Apple": ("Fridge", "CounterTop", "DiningTable"), "Bread": ("CounterTop", "DiningTable"),
               "Potato": ("Fridge", "CounterTop"), "Tomato": ("Fridge", "CounterTop"), "Egg": ("Fridge",),
               "Lettuce": ("Fridge",), "Mug": ("Cabinet", "CoffeeMachine", "CounterTop"),
               "Cup": ("Cabinet", "CounterTop"), "Bowl": ("Cabinet", "DiningTable"), "Plate": ("Cabinet",),
               "Pan": ("StoveBurner", "Cabinet"), "Pot": ("StoveBurner", "Cabinet"), "Knife": ("Drawer", "CounterTop"),
               "ButterKnife": ("Drawer",), "Fork": ("Drawer",), "Spoon": ("Drawer",), "Spatula": ("Drawer",),
               "Ladle": ("Drawer",), "Kettle": ("StoveBurner",), "DishSponge": ("SinkBasin",),
               "SaltShaker": ("CounterTop", "Cabinet"), "PepperShaker": ("CounterTop", "Cabinet"),
               "WineBottle": ("Fridge", "Cabinet")},
    ),
    "bathroom": RoomSpec(
        anchors=("SinkBasin", "CounterTop"),
        optional={"Cabinet": 3, "Drawer": 2, "Toilet": 1, "GarbageCan": 1, "Shelf": 2, "ToiletPaperHanger": 1,
                  "SideTable": 1},
        objects=("SoapBar", "SoapBottle", "Cloth", "ToiletPaper", "SprayBottle", "Candle", "DishSponge",
                 "TissueBox", "HandTowel"),
        homes={"SoapBar": ("SinkBasin", "CounterTop"), "SoapBottle": ("CounterTop", "Toilet"),
               "Cloth": ("Cabinet", "CounterTop"), "ToiletPaper": ("ToiletPaperHanger", "Cabinet"),
               "SprayBottle": ("Cabinet", "Toilet"), "Candle": ("Shelf", "Toilet"), "TissueBox": ("Shelf",)},
    ),
    "bedroom": RoomSpec(
        anchors=("Desk", "Bed"),
        optional={"Drawer": 3, "Shelf": 2, "Dresser": 1, "GarbageCan": 1, "SideTable": 2, "Safe": 1,
                  "ArmChair": 1},
        objects=("Book", "CD", "CellPhone", "CreditCard", "KeyChain", "Pen", "Pencil", "AlarmClock", "Pillow",
                 "Laptop", "BaseballBat", "TennisRacket", "Watch", "Mug", "Bowl"),
        homes={"Book": ("Desk", "Shelf", "Bed"), "CD": ("Drawer", "Desk"), "CellPhone": ("Bed", "Desk"),
               "CreditCard": ("Drawer", "Desk"), "KeyChain": ("Drawer", "Dresser"), "Pen": ("Desk", "Drawer"),
               "Pencil": ("Desk", "Drawer"), "AlarmClock": ("SideTable", "Desk"), "Pillow": ("Bed",),
               "Laptop": ("Desk", "Bed"), "Watch": ("Dresser", "SideTable")},
    ),
    "livingroom": RoomSpec(
        anchors=("SideTable", "Sofa"),
        optional={"CoffeeTable": 1, "ArmChair": 1, "Drawer": 2, "Shelf": 2, "Dresser": 1, "GarbageCan": 1,
                  "Cabinet": 2, "Safe": 1, "Ottoman": 1},
        objects=("RemoteControl", "Newspaper", "Statue", "Vase", "Watch", "KeyChain", "CreditCard", "Pillow",
                 "Laptop", "Book", "CellPhone", "TissueBox"),
        homes={"RemoteControl": ("CoffeeTable", "Sofa"), "Newspaper": ("CoffeeTable", "Sofa"),
               "Statue": ("Shelf", "SideTable"), "Vase": ("Shelf", "SideTable"), "Pillow": ("Sofa", "ArmChair"),
               "Laptop": ("CoffeeTable", "Sofa")},
    ),
}

# Task types each room supports (the inverse of TASK_ROOMS).
ROOM_TASKS = {room: tuple(t for t, rooms in TASK_ROOMS.items() if room in rooms) for room in ROOM_TYPES}


@dataclass(frozen=True)
class Receptacle:
    """One receptacle instance: ALFRED-style id (``Cabinet|-01.25|+00.90|+01.50``), type and location id."""

    id: str
    type: str
    location: str

    @property
    def openable(self) -> bool:
        return self.type in OPENABLE_RECEPTACLES


@dataclass(frozen=True)
class Layout:
    """A room: numbered like an ALFRED floor plan, with its receptacles and (bedroom/living room) desk lamp."""

    number: int
    room: str
    receptacles: tuple[Receptacle, ...]
    start_location: str
    lamp_holder: str | None  # receptacle id holding the desk lamp, when the room has one

    def receptacle_types(self) -> set[str]:
        return {r.type for r in self.receptacles}

    def signature(self) -> tuple:
        """What makes two layouts the same room to an agent: room type and receptacle type counts."""
        counts: dict[str, int] = {}
        for r in self.receptacles:
            counts[r.type] = counts.get(r.type, 0) + 1
        return (self.room, tuple(sorted(counts.items())))


def alfred_id(kind: str, rng: random.Random, used: set[str]) -> str:
    """A fresh ALFRED-style instance id with 3-D coordinates (``SinkBasin`` becomes ``Sink|x|y|z|SinkBasin``)."""
    while True:
        x, y, z = (rng.uniform(-4.0, 4.0) for _ in range(3))
        coords = f"{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"
        ident = f"Sink|{coords}|SinkBasin" if kind == "SinkBasin" else f"{kind}|{coords}"
        if ident not in used:
            used.add(ident)
            return ident


def _location_id(rng: random.Random, used: set[str]) -> str:
    while True:
        ident = f"loc|{rng.randint(-12, 12)}|{rng.randint(-12, 12)}|{rng.choice((0, 1, 2, 3))}|{rng.choice((0, 30, 45, 60))}"
        if ident not in used:
            used.add(ident)
            return ident


def make_layout(number: int, room: str, n_receptacles: int, rng: random.Random) -> Layout:
    """Draw one room of ``room`` type with about ``n_receptacles`` receptacles (never fewer than its anchors)."""
    if room not in ROOMS:
        raise ValueError(f"unknown room type {room!r}; expected one of {ROOM_TYPES}")
    spec = ROOMS[room]
    types = list(spec.anchors)
    capacity = dict(spec.optional)
    for t in types:
        capacity[t] = capacity.get(t, 1) - 1
    while len(types) < n_receptacles:
        choices = sorted(t for t, left in capacity.items() if left > 0)
        if not choices:
            break
        pick = rng.choice(choices)
        capacity[pick] -= 1
        types.append(pick)
    used_ids: set[str] = set()
    used_locs: set[str] = set()
    receptacles = tuple(Receptacle(alfred_id(t, rng, used_ids), t, _location_id(rng, used_locs)) for t in types)
    start = _location_id(rng, used_locs)
    lamp_holder = None
    if "look_at_obj_in_light" in ROOM_TASKS[room]:
        holders = [r.id for r in receptacles if r.type in LAMP_HOLDERS]
        lamp_holder = rng.choice(sorted(holders))
    return Layout(number=number, room=room, receptacles=receptacles, start_location=start, lamp_holder=lamp_holder)
