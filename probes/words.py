"""The built-in vocabulary: word lists for procedural prose, needle keys and values, and cwe.

Plain common English words, written for this project; no external text.
"""

NOUNS = """
river garden window teacher village lantern mountain kitchen harbor forest letter bridge
market engine painter doctor farmer island meadow library castle tower valley orchard
cottage sailor student merchant baker shepherd bottle basket candle carpet ladder mirror
pocket ribbon saddle wagon anchor compass feather hammer helmet needle pillow shovel
blanket bucket cabinet chimney fountain gate hallway lighthouse mill pond road stable
street tunnel wall yard cloud storm breeze shadow morning evening winter summer autumn
spring journey story song promise secret question answer reason method pattern signal
""".split()

ADJECTIVES = """
quiet bright narrow ancient gentle heavy hollow humble golden silver distant crowded
careful patient restless sudden steady broken frozen quick slow warm cold early late
simple strange honest clever modest curious eager faithful fragile generous graceful
lonely loyal polite proud rapid rough shallow sharp smooth soft solemn sturdy tidy
""".split()

VERBS_PAST = """
found carried opened painted repaired visited followed watched described measured
counted gathered borrowed cleaned crossed delivered explored guarded lifted mended
noticed ordered planted polished pulled pushed reached studied traced wrapped
""".split()

VERBS_INTRANSITIVE = """
waited rested wandered listened laughed paused returned smiled travelled worked
slept arrived lingered gathered settled hurried whispered sang
""".split()

ADVERBS = """
slowly quietly carefully gladly rarely often briefly calmly eagerly gently
happily patiently proudly quickly softly steadily suddenly warmly wisely
""".split()

PREPOSITIONS = "near beside behind under across along beyond toward past around".split()

NAMES = """
Anna Boris Clara Daniel Elena Felix Greta Hugo Irene Jonas Karin Leon Maria Nora
Oscar Paula Quentin Rosa Simon Tessa Ulrich Vera Walter Yvonne
""".split()

TIMES = """
at dawn|in the afternoon|before supper|after the rain|on a cold morning|late at night|
during the long winter|at the end of the week|in early spring|on the first day of summer
""".replace("\n", "").split("|")

CONNECTIVES = "Later|Meanwhile|Afterwards|Even so|In the end|For a while|By then|Once again".split("|")

# Needle keys are "adjective-noun" compounds from their own lists, so keys never collide with
# filler phrases; word values come from another list.
KEY_ADJECTIVES = """
amber azure crimson dusty emerald fierce frosty gilded glassy hidden icy jagged
lucky misty mossy noble pale quiet rusty scarlet silent sleepy spotted velvet wild
""".split()

KEY_NOUNS = """
badger beacon canyon comet dragon falcon glacier heron jackal kettle lagoon marble
nebula oyster panther quarry raven sparrow thistle tundra violin walrus willow zephyr
""".split()

VALUE_WORDS = """
apricot bamboo cactus dolphin elephant flamingo giraffe hazelnut iguana jasmine kiwi
lemonade mango nutmeg octopus papaya quinoa raspberry saffron tangerine umbrella
vanilla walnut yogurt zucchini avocado blueberry cinnamon dandelion eucalyptus
""".split()

# Common-words extraction draws from the whole prose vocabulary.
CWE_WORDS = sorted(set(NOUNS + ADJECTIVES + VERBS_PAST + VERBS_INTRANSITIVE + ADVERBS + VALUE_WORDS))
