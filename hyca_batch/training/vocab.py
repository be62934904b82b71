"""Byte-level BPE vocabularies built from a word list, so the tiny tokenizers need no download.

Both HunyuanVideo text encoders use byte-level BPE (Llama-3 and CLIP). Starting from the 256
byte symbols means any unicode text tokenizes (unknown words fall back to bytes, never to an unk
token); the merges learned here make every listed English word a single token, so prompts made of
ordinary words stay short and distinguishable instead of exploding into bytes.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

# Words that synthetic and demo prompts use: colors, shapes, motions, backgrounds, common nouns
# and verbs. Order does not matter (the merge learner sorts); duplicates are harmless.
# Each must be a single pre-token under the Llama-3 split: no digits or apostrophes inside.
ENGLISH_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        """
    a an the this that these those some any each every all both no not and or but nor so yet
    of in on at to from by with without into onto over under above below across along around
    through behind beside between near far inside outside toward towards against among beyond
    is are was were be been being am has have had do does did will would can could should may
    might must shall it its he she they them their his her we our you your i me my one
    what which who whom whose where when why how then than there here very too also only just
    more most less least many much few several other another same different such own
    zero two three four five six seven eight nine ten eleven twelve twenty hundred first second
    third last next single double half pair dozen number numbers
    red orange yellow green blue purple violet pink brown black white gray grey gold golden
    silver cyan magenta teal navy beige maroon olive lime turquoise crimson amber dark light
    bright pale deep pastel neon vivid dull colorful colourful monochrome transparent shiny matte
    color colour colors colours shade hue tint gradient
    circle circles square squares triangle triangles rectangle rectangles ball balls ring rings
    dot dots line lines stripe stripes star stars heart hearts diamond diamonds cross arrow
    arrows spiral spirals cube cubes sphere spheres cone cylinder pyramid disk disc oval hexagon
    polygon blob blobs shape shapes pattern patterns grid checkerboard wave waves curve curves
    point points edge edges corner corners border outline block blocks bar bars tile tiles
    move moves moving moved motion movement movements slide slides sliding slid glide glides
    gliding drift drifts drifting float floats floating fall falls falling fell rise rises rising
    rose drop drops dropping bounce bounces bouncing bounced roll rolls rolling rolled spin spins
    spinning spun rotate rotates rotating rotation turn turns turning turned swing swings swinging
    shake shakes shaking wobble wobbles wobbling jump jumps jumping jumped hop hops hopping fly
    flies flying flew run runs running ran walk walks walking walked swim swims swimming crawl
    crawls crawling race races racing chase chases chasing follow follows following orbit orbits
    orbiting circling zigzag zigzags zigzagging pulse pulses pulsing blink blinks blinking flash
    flashes flashing flicker flickers flickering glow glows glowing fade fades fading appear
    appears appearing disappear disappears disappearing vanish vanishes emerge emerges split
    splits splitting merge merges merging grow grows growing grew expand expands expanding shrink
    shrinks shrinking shrank contract contracts stretch stretches stretching squash squashes
    scale scales scaling zoom zooms zooming pan pans panning tilt tilts tilting push pull pushes
    pulls collide collides colliding hit hits stop stops stopping start starts starting stay
    stays still static steady change changes changing morph morphs morphing transform transforms
    left right up down upward upwards downward downwards forward forwards backward backwards
    sideways clockwise counterclockwise anticlockwise diagonal diagonally horizontal
    horizontally vertical vertically top bottom middle center centre side sides front back
    north south east west away toward slowly quickly fast slow faster slower fastest slowest
    quick gentle gently smooth smoothly sudden suddenly steadily gradually constant constantly
    speed direction distance position path loop loops looping repeat repeats again once twice
    big small large tiny huge little giant long short tall wide narrow thin thick round flat
    sharp soft hard heavy light bigger smaller larger size sizes
    background backgrounds foreground scene scenes sky skies cloud clouds sun sunny sunset
    sunrise moon night day morning evening noon dawn dusk rain rainy snow snowy fog foggy storm
    wind windy weather ground floor wall walls ceiling room rooms field fields grass meadow
    forest forests tree trees leaf leaves flower flowers garden park road roads street streets
    city cities town village building buildings house houses bridge river rivers lake lakes sea
    ocean oceans beach beaches sand desert mountain mountains hill hills valley rock rocks stone
    stones water fire smoke ice space galaxy planet planets universe horizon landscape
    underwater indoor indoors outdoor outdoors studio stage empty plain solid blank canvas
    paper table desk window windows door doors
    cat cats dog dogs bird birds fish horse horses cow sheep rabbit mouse bear lion tiger
    elephant monkey fox wolf deer duck owl butterfly bee insect animal animals person people man
    men woman women boy girl child children baby player crowd robot robots car cars truck bus
    train plane airplane boat ship bicycle bike rocket balloon balloons kite camera cameras
    phone computer screen lamp candle clock book books cup bottle box boxes chair ball toy toys
    food apple apples orange bread cake coffee tea
    object objects thing things item items particle particles pixel pixels letter letters word
    words text texture textures logo sign symbol
    look looks looking see sees watch watches show shows showing make makes making made take
    takes go goes going went come comes coming get gets put place places hold holds holding
    open opens opening close closes closing fill fills filling cover covers covering cut cuts
    draw draws drawing paint paints painting write writes writing play plays playing dance
    dances dancing sing sings sit sits sitting stand stands standing eat eats eating drink
    drinks drinking sleep sleeps sleeping talk talks talking smile smiles smiling wave waving
    throw throws throwing catch catches catching carry carries carrying build builds building
    break breaks breaking burn burns burning melt melts melting pour pours pouring explode
    explodes exploding shine shines shining reflect reflects reflecting
    beautiful pretty ugly old new young ancient modern futuristic realistic cinematic cartoon
    animated abstract simple complex clean noisy blurry sharp detailed minimal minimalist
    vintage retro photorealistic hd close closeup view views shot shots angle angles
    aerial wide overhead zoomed focus focused lighting shadow shadows reflection reflections
    high low quality style styles atmosphere mood calm peaceful busy happy sad scary
    video videos frame frames clip clips image images picture pictures
    """.split()
    )
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which Llama-3 and CLIP vocabularies both use.

    Written out here (not taken from tokenizers' ``ByteLevel.alphabet()``) because its order is
    fixed, and token ids must not depend on a hash seed.
    """
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


_BYTE_TO_UNICODE = bytes_to_unicode()
BYTE_ALPHABET: tuple[str, ...] = tuple(_BYTE_TO_UNICODE[b] for b in range(256))


def to_byte_symbols(text: str) -> list[str]:
    """``text`` as the byte-level symbols a byte-level BPE model works on."""
    return [_BYTE_TO_UNICODE[b] for b in text.encode("utf-8")]


def learn_bpe_merges(words: Iterable[Sequence[str]]) -> list[tuple[str, str]]:
    """Merges that turn each of ``words`` (sequences of symbols) into a single symbol.

    Plain BPE training with every distinct word counted once: repeatedly merge the most common
    adjacent pair, ties broken by the pair itself so the result is the same in every process.
    Applying the merges in rank order to a training word reproduces the training steps, so every
    training word ends as one token.
    """
    corpus = [list(w) for w in sorted({tuple(w) for w in words}) if len(w) > 0]
    counts: Counter[tuple[str, str]] = Counter()
    holders: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for idx, word in enumerate(corpus):
        for pair in zip(word, word[1:]):
            counts[pair] += 1
            holders[pair].add(idx)
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale heap entry
        if pair not in seen:  # a pair re-formed after its merge keeps its first rank
            seen.add(pair)
            merges.append(pair)
        joined = pair[0] + pair[1]
        for idx in sorted(holders.pop(pair, ())):
            word = corpus[idx]
            for old in zip(word, word[1:]):
                counts[old] -= 1
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            corpus[idx] = merged
            for new in zip(merged, merged[1:]):
                counts[new] += 1
                holders[new].add(idx)
            for p in set(zip(word, word[1:])) | set(zip(merged, merged[1:])):
                if p != pair and counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
        del counts[pair]
    return merges
