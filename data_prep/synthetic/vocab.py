"""The default world's word tables (domains, concepts, verb forms, stop words, speech and query
templates, TV shows) and the word bank drawn worlds pick their domains from."""

from __future__ import annotations

# The default world's domains. category_1 | category_2 | nouns | verbs: a video draws all its concepts
# from one domain.
_DOMAIN_TABLE = """
Food and Entertaining | Recipes | onion tomato garlic carrot egg flour butter bowl pan knife | cut pour mix stir peel
Cars & Other Vehicles | Car Repair | engine wheel tire bolt battery wrench hose | screw remove tighten clean
Home and Garden | Painting | brush roller tray door shelf fence | paint sand clean
Hobbies and Crafts | Paper Crafts | paper scissors ribbon card tape box | fold cut wrap
"""
DOMAINS = [
    (c1.strip(), c2.strip(), tuple(nouns.split()), tuple(verbs.split()))
    for c1, c2, nouns, verbs in (row.split("|") for row in _DOMAIN_TABLE.strip().splitlines())
]
NOUNS = tuple(dict.fromkeys(n for d in DOMAINS for n in d[2]))
VERBS = tuple(dict.fromkeys(v for d in DOMAINS for v in d[3]))
_FORMS = (  # base third-person gerund
    "cut cuts cutting, pour pours pouring, mix mixes mixing, stir stirs stirring, peel peels peeling, "
    "screw screws screwing, remove removes removing, tighten tightens tightening, clean cleans cleaning, "
    "paint paints painting, sand sands sanding, fold folds folding, wrap wraps wrapping"
)
VERB_FORMS = {base: (third, gerund) for base, third, gerund in (f.split() for f in _FORMS.split(","))}
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself "
    "she her hers herself it its itself they them their theirs themselves what which who whom "
    "this that these those am is are was were be been being have has had having do does did "
    "doing a an the and but if or because as until while of at by for with about against "
    "between into through during before after above below to from up down in out on off over "
    "under again further then once here there when where why how all any both each few more "
    "most other some such no nor not only own same so than too very s t can will just don "
    "should now".split()
)

# Narration: lowercase, no punctuation, as YouTube auto-captions are.
MENTION_TEMPLATES = (
    "so now we are going to {verb} the {noun} like this",
    "next you want to {verb} the {noun} really carefully",
    "and then i just {verb} the {noun} right here",
    "okay so i am {ving} the {noun} now",
    "you can see me {ving} the {noun} here",
    "what i like to do is {verb} the {noun} first",
    "now {verb} the {noun} and make sure it is even",
    "go ahead and {verb} your {noun} for a bit",
    "alright let us {verb} this {noun} a little bit",
)
CHATTER = (
    "my chickens were really loud this morning",
    "do not forget to like and subscribe",
    "thanks so much for watching my channel",
    "my grandmother taught me this years ago",
    "the weather here has been crazy this week",
    "let me know in the comments what you think",
    "we went on vacation last summer and loved it",
    "i will put a link in the description below",
    "my neighbor asked me about this yesterday",
    "hey guys welcome back to another video",
)
UNRELATED_WORDS = tuple(sorted({w for s in CHATTER for w in s.split()} - STOP_WORDS))

# TV subtitles: "(Speaker:) Text." as in tvqa_preprocessed_subtitles.jsonl.
SHOWS = {
    "friends": ("Rachel", "Ross", "Monica", "Joey", "Chandler", "Phoebe"),
    "bbt": ("Sheldon", "Leonard", "Penny", "Howard", "Raj"),
    "castle": ("Castle", "Beckett", "Esposito", "Ryan"),
    "house": ("House", "Wilson", "Cuddy", "Foreman"),
    "grey": ("Meredith", "Cristina", "Derek", "Izzie"),
    "met": ("Ted", "Marshall", "Lily", "Barney", "Robin"),
}
SUB_MENTIONS = (
    "Could you {verb} the {noun} for me?",
    "I'm going to {verb} the {noun} now.",
    "Why are you {ving} the {noun}?",
    "Stop {ving} the {noun}!",
    "Did you {verb} the {noun} yet?",
)
SUB_CHATTER = (
    "I can't believe you just said that.",
    "We need to talk.",
    "Where were you last night?",
    "Oh my God!",
    "That is not what I meant.",
    "Are you kidding me?",
    "Okay, okay, I get it.",
    "You're gonna be late again.",
)
# Query templates per dataset ({who} a subject, {verbs}/{ving} verb forms).
TVR_DESC = {
    "v": ("{who} {verbs} the {noun}.", "{who} is {ving} the {noun} in the room."),
    "t": ("{who} talks about {ving} the {noun}.", "{who} asks someone to {verb} the {noun}."),
    "vt": ("{who} {verbs} the {noun} while talking about it.",),
}
DIDEMO_DESC = (
    "a person {verbs} the {noun}",
    "someone starts {ving} the {noun}",
    "camera shows a hand {ving} the {noun}",
    "first time someone {verbs} the {noun}",
)
HOW2R_DESC = (
    "a person {verbs} the {noun}",
    "first, the man {verbs} the {noun}",
    "someone is {ving} the {noun} with both hands",
    "after that, the woman {verbs} the {noun}",
)
HOW2QA_QUESTIONS = (  # what the event's verb acts on: its noun is the answer
    "what does the person {verb}?",
    "what is the man {ving}?",
    "in this part, what does the woman {verb}?",
    "what is someone {ving} here?",
)
MSRVTT_DESC = (
    "{who} is {ving} the {noun}",
    "{who} {verbs} {a_noun}",
    "a video of someone {ving} {a_noun}",
    "{who} {verbs} the {noun} in the video",
    "someone is showing how to {verb} {a_noun}",
    "{who} {verbs} the {noun} while talking",
)
MSRVTT_WHO = ("a man", "a woman", "a person", "someone", "a girl", "a chef")
ANET_DESC = (
    "A {who} is {ving} the {noun}.",
    "The {who} then {verbs} the {noun}.",
    "After that, the {who} {verbs} the {noun}.",
    "The {who} {verbs} the {noun} carefully.",
)
ANET_WHO = ("man", "woman", "person", "boy", "girl")


# ---------------------------------------------------------------- the word bank of drawn worlds

Domain = tuple[str, str, tuple[str, ...], tuple[str, ...]]  # category_1, category_2, nouns, verbs

# The word bank drawn worlds pick domains from. category_1 | category_2 | nouns | verbs; "a/b" are
# one concept with two surface forms (its first is the concept's name). A concept in several domains
# is one concept (one prototype); its synonyms are written once. Single words only, no surface form
# in two concepts, none a noun and a verb, none in the templates or the chatter (tests check).
_BANK_TABLE = """
Food and Entertaining | Recipes | onion tomato garlic carrot potato bowl pan/skillet knife/blade pot/saucepan
    | cut/chop/slice pour stir peel mix/combine
Food and Entertaining | Baking | flour butter egg sugar dough oven cupcake/muffin batter
    | whisk/whip/beat knead bake sift/sieve
Cars & Other Vehicles | Car Repair | engine/motor wheel tire/tyre bolt battery wrench/spanner hose jack bumper
    | screw remove/detach tighten clean/wipe/scrub
Cars & Other Vehicles | Bike Repair | chain pedal saddle/seat tire rim brake gear/cog pump
    | oil/lubricate inflate adjust/tune loosen/unscrew clean
Home and Garden | Painting | brush roller tray door shelf fence wall ladder
    | paint/coat sand clean scrape
Home and Garden | Gardening | soil/dirt shovel/spade bulb bucket/pail rake hedge compost trowel
    | dig prune/trim sow/plant spray/mist
Home and Garden | Woodworking | plank/board hammer nail chisel screwdriver workbench dowel ruler
    | measure drill/bore carve/whittle polish/buff
Home and Garden | Cleaning | sink/basin counter/countertop window mirror floor sponge mop carpet/rug bucket
    | clean rinse/wash vacuum/hoover sweep polish
Hobbies and Crafts | Paper Crafts | paper/cardstock scissors ribbon card tape box/carton
    | fold/crease cut wrap attach
Hobbies and Crafts | Sewing | cloth/fabric needle thread/yarn button zipper/zip sleeve pocket collar
    | sew/stitch cut iron/press measure
Arts and Entertainment | Drawing | pencil eraser/rubber canvas easel ink palette sketchbook/notebook marker/pen
    | draw/sketch shade/hatch erase color/colour
Pets and Animals | Dog Grooming | dog/puppy comb leash towel paw ear shampoo/soap tail
    | groom feed walk rinse
"""


def _parse_bank(table: str) -> tuple[tuple[Domain, ...], dict[str, tuple[str, ...]]]:
    domains, synonyms = [], {}
    for row in table.strip().replace("\n    |", " |").splitlines():  # a domain's verbs continue its line
        c1, c2, nouns, verbs = (part.strip() for part in row.split("|"))
        names = []
        for words in (nouns.split(), verbs.split()):
            names.append(tuple(w.split("/")[0] for w in words))
            for forms in (tuple(w.split("/")) for w in words if "/" in w):
                if synonyms.setdefault(forms[0], forms) != forms:
                    raise ValueError(f"word bank: {forms[0]} has two synonym lists")
        domains.append((c1, c2, names[0], names[1]))
    for _, _, nouns, verbs in domains:
        for concept in nouns + verbs:
            synonyms.setdefault(concept, (concept,))
    return tuple(domains), synonyms


WORD_BANK, BANK_SYNONYMS = _parse_bank(_BANK_TABLE)  # BANK_SYNONYMS: concept -> its surface forms
_DOUBLED = frozenset("cut stir chop whip dig trim wrap scrub drip snip plug rub pat tap stop shop".split())


def verb_forms(base: str) -> tuple[str, str]:
    """(third person, gerund) of a verb by rule: -es after s/sh/ch/x/z/o, consonant+y -> -ies; the gerund
    drops a silent final e (not -ee/-ye/-oe), -ie -> -ying, and doubles the final consonant of the short
    verbs in _DOUBLED (cut -> cutting)."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        third = base + "es"
    elif base.endswith("y") and base[-2:-1] not in tuple("aeiou"):
        third = base[:-1] + "ies"
    else:
        third = base + "s"
    if base in _DOUBLED:
        gerund = base + base[-1] + "ing"
    elif base.endswith("ie"):
        gerund = base[:-2] + "ying"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        gerund = base[:-1] + "ing"
    else:
        gerund = base + "ing"
    return third, gerund
