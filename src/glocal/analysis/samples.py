"""Built-in sample text: original paragraphs of about 256 word-piece tokens each (all-MiniLM-L6-v2's tokenizer).

- ``CALIBRATION`` (26 paragraphs, kinds in ``CALIBRATION_KINDS``): the text conversion plans are built on.
  Four expository essays and 22 other kinds of prose: narrative, technical explanation, step-by-step
  instructions, news reports, a letter, a product review, travel writing, biography, history, opinion,
  a scientific abstract, a sports report, a diary, a museum guide, explainers, a folk tale, a speech.
  :func:`glocal.plan_from_report` fits measured plans on three of every four and holds out every
  fourth; its model-free defaults were chosen on this text (docs/analysis.md, "Measured").
- ``EVALUATION`` (6): other expository paragraphs of the kind of the first four calibration ones, what
  ``glocal convert`` judges the converted model on.
- ``UNSEEN`` (14, kinds in ``UNSEEN_KINDS``): kinds that appear nowhere in ``CALIBRATION``: dialogue,
  legal clauses, code and a configuration file with comments, lists and a specification sheet, an FAQ, a
  chat log, verse, meeting minutes, release notes, a glossary. It confirms that a plan holds on text of
  another kind; nothing was tuned on it.
- ``SAMPLE``: what ``glocal inspect`` reads when no file is given.

Example:
    >>> from glocal.analysis.samples import CALIBRATION, EVALUATION, UNSEEN, UNSEEN_KINDS
    >>> len(CALIBRATION), len(EVALUATION), len(UNSEEN) == len(UNSEEN_KINDS)
    (26, 6, True)
"""

CALIBRATION = [
    # baking
    "Anyone who bakes bread at home learns sooner or later that the recipe is only half of the story. "
    "Flour from one mill drinks more water than flour from another, a warm kitchen in July makes the dough "
    "rise twice as fast as the same kitchen in January, and the starter that bubbled eagerly last week may "
    "sulk after a few days in the refrigerator. So the experienced baker watches the dough rather than the "
    "clock. She presses a floured finger into the surface and sees how slowly the dent springs back. She "
    "lifts the bowl and feels whether the mass has become light and airy or is still dense and sticky. "
    "When the loaf finally goes into the oven, a pan of water on the lower rack fills the chamber with "
    "steam, which keeps the crust soft long enough for the bread to expand. Twenty minutes later the steam "
    "is released, the crust darkens, and the kitchen fills with the smell of toasted grain. The hardest "
    "part comes last: waiting an hour before cutting, because the crumb is still setting as it cools, and "
    "a knife pushed in too early leaves a gummy streak through the middle of an otherwise perfect loaf. "
    "Patience, it turns out, is an ingredient that never appears on the list but matters more than salt.",
    # tide pools
    "At low tide the rocky shelf below the lighthouse turns into a scattered city of small pools, each one "
    "a world that lasts only a few hours before the sea returns. Children crouch at the edges with their "
    "noses almost touching the water. Anemones fold their green tentacles inward when a shadow passes, "
    "hermit crabs drag borrowed shells across the sand, and tiny fish dart beneath ledges of pink coralline "
    "algae. The creatures here live with extremes that would kill most animals. In the afternoon sun the "
    "water in a shallow pool can grow hot and salty as evaporation concentrates the brine; after a storm, "
    "rain can make it almost fresh. Oxygen runs low at night when the algae stop producing it, and a gull "
    "may arrive at any moment looking for a meal. Every resident has a strategy. Mussels clamp their shells "
    "shut and wait. Sea stars retreat into crevices where the rock stays cool and damp. Limpets return to "
    "the exact spot they carved into the stone, a shallow scar that fits their shell so closely that no "
    "water escapes. Marine biologists have counted more than a hundred species in a single pool no larger "
    "than a bathtub, all of them depending on the steady rhythm of the moon pulling the ocean back and forth.",
    # chess
    "Beginners often think that chess is decided in the opening, where memorised sequences seem to promise "
    "an advantage, but many games between club players are actually won or lost in the endgame, long after "
    "the queens have left the board. With only a few pieces remaining, the value of each move rises sharply. "
    "A king that hid in the corner for forty moves suddenly becomes a fighting piece and must march toward "
    "the centre. A single tempo, one wasted move, can decide whether a pawn promotes or is caught. The "
    "classic lesson concerns opposition: when two kings face each other with one square between them, the "
    "side that does not have to move usually holds the key squares. Another lesson concerns rooks, which "
    "belong behind passed pawns, whether those pawns are their own or the opponent's. Studying such "
    "positions feels dry at first, since there are no dramatic sacrifices and no mating attacks, only quiet "
    "manoeuvres and careful counting. Yet players who invest the time find that their middlegame improves "
    "as well, because they finally know which simplified positions are winning and which are merely "
    "drawn. Knowing where the game is going makes it much easier to choose the road that leads there.",
    # weather
    "A weather forecast is a statement about probability, not a promise, and the difference matters more "
    "than most listeners realise. When a presenter says there is a seventy percent chance of rain tomorrow, "
    "the number summarises many runs of a numerical model, each started from slightly different initial "
    "conditions. The atmosphere is a chaotic system: tiny errors in the measured temperature over an ocean "
    "or the wind speed above a mountain range grow day by day until two simulations that began almost "
    "identically describe completely different skies. Forecasters therefore run an ensemble, perhaps fifty "
    "versions of the future, and count how many of them bring rain to a given town. If thirty-five of the "
    "fifty do, the forecast reads seventy percent. This approach also tells the forecaster how confident to "
    "be. When the ensemble members agree closely, the prediction can be trusted several days ahead; when "
    "they scatter like startled birds, even tomorrow is uncertain. Satellites, balloons, aircraft and "
    "thousands of ground stations feed new observations into the models every few hours, nudging them back "
    "toward reality. Over the past forty years the typical error of a three-day forecast has shrunk to what "
    "a one-day forecast achieved in the nineteen eighties, a quiet triumph of physics and computing.",
]

EVALUATION = [
    # violin making
    "In a narrow workshop above a shoe repair shop, a violin maker spends most of a year on a single "
    "instrument. The top is carved from spruce that grew slowly on a cold mountainside, so its rings lie "
    "close together and the wood is both light and stiff. The back, ribs and neck come from maple, chosen "
    "for the rippling figure that catches the light when the instrument turns. Each plate is thinned with "
    "gouges and small finger planes until it rings at the right pitch when tapped near the maker's ear. "
    "This tuning of the plates is part science and part habit. Some makers measure the vibration patterns "
    "by sprinkling fine tea leaves on the wood and driving it with a loudspeaker, watching the leaves gather "
    "along the silent lines. Others trust the feel of the wood flexing between their thumbs. The varnish "
    "alone can take months, applied in thin coats and left to cure in sunlight, because a thick or hasty "
    "finish dampens the sound. When the strings are finally fitted and the bridge is set, nobody knows "
    "exactly how the violin will speak. It usually sounds tight and shy at first and opens up over the "
    "following years, as the wood settles and a player teaches it, note by note, how to sing.",
    # glaciers
    "A glacier looks motionless to a hiker standing beside it, but it is a river of ice that flows downhill "
    "under its own weight, sometimes a few centimetres a day and sometimes several metres. Snow that falls "
    "in the high basin is buried by later snow, compressed, and slowly turned into dense blue ice over "
    "decades. Near the bottom of the glacier, the pressure and the heat rising from the ground can melt a "
    "thin film of water that lets the whole mass slide over the bedrock. Where the valley steepens, the "
    "brittle surface cracks into crevasses, deep blue slots that can hide beneath a bridge of fresh snow. "
    "The ice carries stones plucked from the valley walls and grinds them against the floor, polishing the "
    "rock and leaving long scratches that geologists still read thousands of years after the ice has gone. "
    "At the lower end, the glacier melts as fast as new ice arrives, and the position of that snout is a "
    "sensitive record of climate. Photographs taken a century ago show many valleys in the Alps filled "
    "with ice that has since retreated by kilometres, leaving ridges of gravel and pale lakes of meltwater "
    "where cattle once grazed beside a frozen wall.",
    # early computer memory
    "The first electronic computers had a problem that seems strange today: they could calculate far faster "
    "than they could remember. Engineers tried every physical effect they could think of to store a few "
    "thousand bits. One design sent sound pulses through long tubes of mercury and caught them at the far "
    "end, amplified them and sent them round again, so the data lived as a train of ripples in motion. "
    "Another painted dots of electric charge on the face of a cathode ray tube and read them back before "
    "they faded. Both were delicate. A passing truck or a change in room temperature could corrupt a "
    "program. The breakthrough came with tiny rings of magnetic ferrite threaded on grids of fine wire. "
    "Each ring stored one bit as the direction of its magnetisation, and it kept that bit even when the "
    "power was switched off. Rows of workers, many of them women with experience in textile factories, "
    "threaded the cores by hand under magnifying glasses. Core memory was reliable enough to fly to the "
    "moon and remained in use for two decades, until chips of silicon made it obsolete. Programmers still "
    "speak of a core dump when a crashed program writes out its memory, an echo of those woven planes.",
    # village market
    "On Saturday mornings the square in front of the old town hall fills with folding tables long before "
    "the church bell strikes seven. The cheese seller arrives first, because her van is the hardest to park, "
    "and she sets out wheels of hard mountain cheese beside soft rounds that are already starting to run. "
    "Next to her a retired teacher sells honey in mismatched jars and tells anyone who will listen which "
    "flowers his bees visited that month. The vegetable stalls change with the calendar: asparagus and "
    "radishes in spring, then tomatoes in every colour, then pumpkins and crates of muddy potatoes as the "
    "evenings turn cold. People come for the food, but they stay for the conversation. Neighbours who "
    "have not spoken all week trade news about a broken fence, a new baby, or the bus route that is "
    "changing again. Children run between the tables with paper bags of cherries and are scolded gently "
    "for spitting the stones. By noon the crowd thins, prices drop on the last loaves and bunches of "
    "flowers, and the sellers start packing crates into their vans. An hour later the square is swept "
    "clean, and only a few pigeons remain, searching the cobbles for crumbs and the occasional dropped grape.",
    # mountain rescue
    "When a call reaches the mountain rescue team at night, the first decisions are made on the telephone. "
    "The coordinator asks where the injured climber is, what the weather is doing, and whether anyone in the "
    "party can still walk. A helicopter is the fastest option, but low cloud, strong wind or darkness in a "
    "narrow gully can make flying impossible, and then the team must go on foot. Volunteers leave their "
    "dinners and their beds, pull on boots that are always packed by the door, and meet at the base within "
    "half an hour. They carry a stretcher that splits into two halves, ropes, a vacuum mattress that "
    "stiffens around a broken body, warm drinks, and far more batteries than seems necessary. The approach "
    "can take hours. Once they reach the casualty, a medic assesses injuries while others build an anchor "
    "in the rock and rig a lowering system. Moving a person down steep ground is slow and exhausting work, "
    "with every step discussed aloud so that nobody slips. Most rescues end in a car park in the grey light "
    "of dawn, with an ambulance waiting and a tired team quietly coiling ropes, already thinking about "
    "which pieces of equipment need drying and repairing before the next call comes.",
    # paper folding
    "Origami began as a craft of cranes and boxes, yet it has turned into a surprising branch of mathematics "
    "and engineering. A sheet of paper can only bend, never stretch, and that single restriction leads to "
    "precise rules. At any point where creases meet inside a flat-folded model, the numbers of mountain folds "
    "and valley folds always differ by exactly two, and the angles around the point, taken alternately, add "
    "up to a straight line. From such rules designers have built algorithms that take a stick figure, say a "
    "beetle with six legs and two antennae, and compute a crease pattern that folds a single uncut square "
    "into that shape. Engineers borrowed the ideas for structures that must travel small and open large. "
    "Solar panels for satellites are folded in a pattern that unfolds with one pull, and a stent that "
    "expands inside a blood vessel can use the same geometry. Researchers have even folded strands of DNA "
    "into tiny boxes with lids that open when a particular molecule arrives. The old craft still rewards "
    "patience in the simplest way, though: a child who makes a first paper crane, with sharp creases and a "
    "head bent just so, learns that small careful steps, repeated in order, can produce something alive.",
]


def _labelled(block: str) -> list[tuple[str, str]]:
    """(kind, paragraph) pairs of a text block: paragraphs are separated by blank lines, each opens with a
    ``[kind]`` label line. Prose is wrapped for this file and joined with spaces; a label followed by
    ``(lines)`` keeps the line breaks (dialogue, code, chat), which belong to the text."""
    out = []
    for part in block.strip().split("\n\n"):
        label, body = part.split("\n", 1)
        kind = label[1:label.index("]")]
        out.append((kind, body if label.endswith("(lines)") else " ".join(body.split())))
    return out


# Calibration text: 22 kinds of prose (narrative, technical, instructions, news, letter, review, travel,
# biography, history, opinion, abstract, sports report, diary, museum guide, explainers, folk tale, speech).
_MORE_CALIBRATION = """
[narrative: the night ferry]
The last ferry of the evening left the harbour at ten, and Ruth was usually the only passenger who stayed on the
open deck. She liked the cold. She liked watching the town shrink into a string of yellow lights, the church
tower last to disappear, while the engine hummed somewhere below her feet like a patient animal. On this
particular night a boy of about twelve came up the metal stairs, looked around as if he expected to be scolded,
and sat down on the bench opposite her. He had a paper bag of chips and a book with a torn cover. For a while
neither of them spoke. Then the boat rolled over a swell, the chips scattered across the deck, and the boy said
a word his mother would not have liked. Ruth laughed before she could stop herself. He looked up, offended, and
then he laughed too. They collected the chips together, threw the ruined ones to the gulls that followed the
stern, and shared what was left. He told her he was going to stay with his grandfather, who kept sheep on the
island and did not own a television. She told him that was the best news she had heard all week, and she meant
it. By the time the island pier came out of the dark, he had read her the first chapter of his book aloud.

[narrative: the repair shop]
Mr. Okafor's repair shop smelled of solder and old coffee, and every shelf held something that had stopped
working in somebody's life. There were radios with cracked dials, a sewing machine missing its foot pedal, three
toasters, and a clock that chimed thirteen times at noon. Lena had come in to ask about her grandmother's record
player, which no longer turned, and stayed for two hours. He let her watch as he took off the back panel,
unscrewed the platter and lifted out a rubber belt that had gone soft and sticky with age. That is the whole
problem, he said, holding it up like a dead worm. Forty years of turning, and the rubber gives up before the
motor does. He found a replacement in a drawer full of belts sorted by size, each labelled in his small careful
handwriting. While he worked he talked about the things people brought him: a music box that had played at a
wedding in nineteen fifty, a radio that a sailor had carried around the world. He never threw anything away, he
said, because sooner or later someone arrived needing exactly the part he had kept. When the platter finally
spun and the needle dropped, a scratchy trumpet filled the shop. Lena paid him, and on the way out she asked
whether he needed help on Saturdays.

[technical: hash tables]
A hash table stores values so that each one can be found again in roughly constant time, however many entries
the table holds. The idea is simple. A hash function turns each key, perhaps a word or a customer number, into
an integer, and the integer modulo the number of slots picks the slot where the entry lives. Looking a key up
repeats the calculation and goes straight to the right place instead of searching the whole collection. The
complication is that two different keys can land in the same slot, which is called a collision. One common
remedy, chaining, keeps a short list in every slot and walks it on each lookup. Another, open addressing, stores
every entry directly in the array and, when a slot is taken, probes a sequence of other slots until it finds a
free one. Both approaches stay fast only while the table is not too full. Once the load factor, the ratio of
entries to slots, passes a threshold such as three quarters, the implementation allocates a larger array,
usually twice the size, and inserts every entry again. That resizing step is expensive, but it happens rarely
enough that the average cost per insertion stays constant. A poor hash function that sends many keys to the same
few slots destroys this guarantee, which is why libraries choose their functions carefully.

[technical: solar cells]
A solar cell turns light into electric current without any moving parts, and the trick lies in a thin boundary
inside a slice of silicon. Pure silicon conducts electricity poorly, so manufacturers add tiny amounts of other
elements. A trace of phosphorus supplies extra electrons and makes one layer negative, while boron leaves gaps,
called holes, that behave like positive charges in the layer beneath it. Where the two layers meet, electrons
and holes drift across and cancel each other, leaving a narrow region with a built-in electric field. When a
photon of sunlight strikes the silicon with enough energy, it knocks an electron loose and creates a pair of
free charges. The field in the junction sweeps the electron one way and the hole the other, and metal contacts
on the front and back collect them as a current that can light a lamp or charge a battery. Not every photon
helps. Infrared light carries too little energy to free an electron, and blue light carries more than is needed,
with the surplus lost as heat. These limits cap a simple silicon cell at an efficiency of roughly thirty
percent, and commercial panels reach around twenty. Researchers stack layers of different materials, each tuned
to a different colour of light, to push the figure higher, though such cells remain expensive.

[instructions: repotting a plant]
Repotting a houseplant takes about twenty minutes and gives it room to grow for another year or two. Start by
choosing a new pot only one size larger than the old one, about two or three centimetres wider, with a drainage
hole in the bottom; a pot that is much too big holds wet soil around the roots for too long and invites rot.
Water the plant lightly the day before so that the root ball slides out in one piece. Lay newspaper on the
table, turn the old pot on its side, and ease the plant out by supporting the base of the stems with one hand
while you tap the rim with the other. Look at the roots. Healthy roots are firm and pale; brown, mushy ones
should be trimmed away with clean scissors. If the roots circle tightly around the outside of the ball, tease a
few of them loose with your fingers so they will grow outward into the fresh soil. Put a layer of new potting
mix in the bottom of the new pot, set the plant on it so that the top of the root ball sits a finger's width
below the rim, and fill in around the sides, pressing gently. Water until it runs out of the hole, let it drain,
and keep the plant out of direct sun for a week while it settles.

[instructions: pitching a tent]
Before you pitch a tent, walk around the site and look for the flattest patch of ground, a little higher than
its surroundings so that rain runs away rather than pooling under you. Clear away stones, pine cones and sticks,
because even a small one will find your back in the middle of the night. Lay the groundsheet down first, shiny
side up if it has one, and fold any edges that stick out beyond where the tent will stand; otherwise the sheet
catches rain and channels it underneath. Spread the inner tent on top with the door facing away from the wind.
Assemble the poles by letting the elastic cord pull each section into the next, and never snap them together
hard, which cracks the ends. Most dome tents use two long poles that cross in the middle; feed them through the
sleeves or clip them on, then bend them into arches and seat their tips in the eyelets at the corners. Peg the
corners out at an angle of about forty-five degrees, leaning away from the tent, so that a tug on the guy line
drives the peg deeper. Throw the flysheet over the top, line up its door with the inner door, and tension the
guy lines evenly. A well pitched tent has no flapping fabric and a gap all round between the two layers.

[news-like: bike lanes]
The city council voted seven to four on Tuesday night to build protected bicycle lanes along the length of
Harbour Road, ending two years of heated debate over one of the busiest streets in the eastern district. The
plan removes one lane of car traffic in each direction and replaces it with a raised cycle track separated from
the road by a low concrete kerb and a row of planters. Construction is expected to begin in the spring and to
take about eight months, during which buses will be diverted to a parallel street. Supporters packed the public
gallery, many wearing cycling helmets, and cheered when the result was announced. Councillor Maria Tevez, who
proposed the scheme, said that the number of cyclists injured on the road had doubled in five years and that the
city could not wait for another death. Shop owners along the route were less enthusiastic. Several told the
meeting that the loss of parking spaces would drive customers to the shopping centre on the ring road. The
council has promised a loading bay on every block and a review of the effect on local businesses after one year.
The project will cost an estimated four point two million, about half of which comes from a national grant for
sustainable transport awarded last autumn.

[news-like: storm closes port]
Strong winds and heavy seas forced the closure of the northern port on Friday morning, stranding hundreds of
lorry drivers and holiday travellers as ferry operators cancelled all sailings until at least Sunday. The
national weather service issued its highest warning for the coast overnight, predicting gusts of up to one
hundred and twenty kilometres an hour and waves of eight metres in the open channel. By mid morning a queue of
freight vehicles stretched for eleven kilometres along the motorway leading to the terminal, and police had
opened an emergency holding area on a disused airfield. Volunteers from local churches handed out hot drinks and
sandwiches to drivers, some of whom had been waiting since the previous afternoon. In the town itself the sea
wall was closed to pedestrians after spray began breaking over the promenade, and several streets near the
harbour were flooded at high tide. Power cuts affected around six thousand homes in villages further along the
coast when falling trees brought down overhead lines. The port authority said that its own staff would inspect
the breakwater and the loading ramps for damage as soon as conditions allowed, and that it hoped to resume
sailings on Sunday afternoon, with extra crossings through the night to clear the backlog of traffic.

[personal letter]
Dear Tom, thank you for the parcel, which arrived on Thursday in a box so battered that I was amazed anything
inside had survived. The jar of honey was whole, the socks are already on my feet, and the photographs have gone
on the kitchen wall beside the calendar. You asked how the new job is going. Honestly, the first month was hard.
Everyone here speaks quickly and assumes I know the names of people and projects I have never heard of, and for
the first week I got lost every time I tried to find the canteen. But it is getting better. My manager is
patient, the work itself is interesting, and on Fridays a group of us walks down to the river at lunch and eats
on the steps, whatever the weather. The flat is small and the heating makes a noise like a distant train, but
the window looks over a park, and in the mornings I can watch the dog walkers doing their rounds. I miss your
cooking, and I miss our arguments about films even more. Please tell Mum that I am eating vegetables, at least
occasionally. If you can get time off in the spring, come and visit; the sofa folds out into a bed that is
almost comfortable, and I will show you the best bakery in the city. Write soon. Love, Anna.

[product review: a kettle]
I bought this kettle after my old one began to taste of metal, and after three months of daily use I can
recommend it with a few reservations. The good news first. It is fast: a full litre reaches the boil in a little
under three minutes, noticeably quicker than my previous model, and it is quiet enough that I no longer wake the
household when I make tea at six in the morning. The temperature dial is the real reason to buy it. You can
choose anything from forty degrees to boiling, which matters if you drink green tea, which turns bitter with
water that is too hot, or if you prepare bottles for a baby. The kettle holds the chosen temperature for half an
hour, and a soft beep tells you when it is ready. Now the drawbacks. The lid opens with a button that needs a
firm push, and the hinge already feels less solid than it did. The water window is on the side facing the
handle, so left-handed users will struggle to read it. The base is larger than it needs to be and takes up more
counter space than I expected. The price is high compared with simpler models. Still, if you care about tea or
coffee and use a kettle several times a day, the temperature control alone justifies the cost.

[travel writing]
The road to the village climbs for an hour through chestnut forests, the bus grinding through each hairpin bend
while the driver greets every oncoming car with a tap on the horn. Then the trees thin out, the valley opens
below, and the houses appear all at once, stacked on the slope like books on a crooked shelf, their roofs made
of thin grey stone. There is one square, one church, one bar, and a fountain whose water is so cold that it
makes your teeth ache. In the afternoon the old men sit outside the bar playing cards and arguing about
football, while the women carry bags of vegetables up streets that are really staircases. Nobody is in a hurry.
I took a room above the bakery, and every morning at five the smell of bread came up through the floorboards
long before the sun came over the ridge. The walks from the village are the reason to come. One path follows an
old mule track to a chapel on the next peak; another drops to the river, where a stone bridge with a single arch
has stood for six hundred years. On the last evening the owner of the bar refused to let me pay for my wine,
saying that anyone who climbed to the chapel twice had earned it.

[biography]
Helena Marsh was born in a mining town in nineteen twelve, the fourth of seven children, and left school at
fourteen to work in a laundry. She might have stayed there had a customer not left behind a textbook on
astronomy, which she read at night by the light of the boiler room. At eighteen she wrote to the director of the
city observatory asking for a job, any job, and was hired to wash the photographic plates on which the
telescopes recorded the night sky. Within two years she was measuring the plates herself. The work was tedious:
hour after hour bent over a magnifier, recording the position and brightness of thousands of faint stars. But
Marsh noticed what others had missed, that a handful of stars in a distant cluster brightened and faded on a
regular cycle, and that the longer the cycle, the brighter the star. The relationship allowed astronomers to use
such stars as measuring rods for distances far beyond anything previously possible. Her paper on the subject was
published under the name of the observatory director, a common practice at the time, and she received public
credit only decades later. She worked at the observatory until her retirement, trained a generation of younger
assistants, and in old age gave lectures to schoolchildren about the patience that discovery requires.

[history: canals]
Before railways, the cheapest way to move heavy goods across land was to avoid the land altogether, and in the
second half of the eighteenth century a fever of canal building swept through the industrial regions of Europe.
A single horse walking along a towpath could pull a barge carrying thirty tons of coal, roughly a hundred times
what the same horse could drag in a cart over the rutted roads of the time. Mine owners and manufacturers saw
immediately what this meant for their costs. The first great canals were financed by groups of local investors
who bought shares and waited years for a return, and the engineers who built them learned as they went. They had
to keep the water level, so the routes followed the contours of hills in long winding curves; where a hill could
not be avoided, they dug tunnels by hand, or built flights of locks that lifted boats up the slope step by step.
Aqueducts carried canals over rivers on stone arches. Thousands of labourers moved earth with shovels and
wheelbarrows, living in camps that moved with the works. For a few decades the canals carried the raw materials
of industry, until the railways, faster and able to climb, took most of their trade within a single generation.

[opinion: the four-day week]
Every few years someone proposes that we should all work four days a week instead of five, and every few years
the idea is dismissed as a luxury the economy cannot afford. It is time to take it more seriously. The five-day
week is not a law of nature; it was itself a reform, won within living memory by people who were told that a
free Saturday would ruin industry. Trials in several countries over the last decade have produced remarkably
consistent results. Companies that cut hours without cutting pay found that output stayed roughly the same,
because people wasted less time, took fewer sick days, and were less likely to leave for another job. Staff
reported better sleep, less stress, and more time for children and ageing parents. None of this means the change
would be easy everywhere. A hospital ward or a bus route cannot simply close on Fridays, and for such services a
shorter week means hiring more people, which costs money. Small firms with thin margins may struggle. But these
are arguments for doing it carefully, sector by sector, with public support where it is needed, not for refusing
to try. We accepted long ago that more free time is one of the things a richer society should buy with its
wealth. The question is only when we collect.

[scientific abstract: bees]
We studied how honeybee foragers adjust their routes when the flowers they visit are depleted at different
rates. Forty colonies were placed in a large enclosed meadow containing artificial flowers that delivered small
amounts of sugar solution and refilled on controlled schedules. Individual bees were marked with numbered tags,
and their visits were recorded by cameras mounted above each flower over a period of six weeks. When all flowers
refilled at the same rate, foragers quickly settled into stable circuits, visiting the same sequence of flowers
in the same order on most trips, and the circuits of different bees overlapped little. When half of the flowers
were switched to a slower refill schedule, bees abandoned those flowers within two days, and the remaining
flowers were shared among more individuals, with a measurable increase in the time each bee spent searching.
Bees that had previously visited the slowed flowers were more likely than others to explore new parts of the
meadow, suggesting that a drop in reward at familiar sites triggers exploration rather than simple substitution.
A computational model in which each forager tracks a running average of the reward at each flower reproduced the
main patterns. These results indicate that bees respond to changes in resource renewal, not only to the presence
of flowers.

[sports report]
The home side came from two goals down to win three to two on Saturday, a comeback that few in the stadium would
have predicted at half time. The visitors had dominated the opening forty-five minutes. Their captain scored
from close range after a corner in the twelfth minute, and shortly before the break a long shot deflected off a
defender and looped over the stranded goalkeeper. The home crowd greeted the half-time whistle with boos.
Whatever the manager said in the dressing room worked. Within four minutes of the restart a quick passing move
down the left ended with a low cross that the young striker turned into the net at the near post. The pressure
grew. The visiting goalkeeper made two fine saves, one with his fingertips onto the crossbar, before a header
from a free kick levelled the scores with twenty minutes left. The winner came in stoppage time, when a
substitute who had been on the pitch for only six minutes ran onto a clearance, outpaced two defenders and shot
across the goalkeeper into the far corner. The referee blew for full time moments later. The result lifts the
home team to fifth in the table, two points behind the promotion places, with eight matches of the season
remaining.

[diary]
Monday. Rain all day, the kind that does not fall so much as hang in the air and soak you from every direction
at once. I took the long way to work anyway, along the canal, because the short way goes past the building site
and the noise there starts at seven. A heron was standing on the lock gate, completely still, and it did not
move even when a cyclist rang her bell right beside it. At work the meeting I had been dreading was cancelled at
the last minute, which felt like a gift, and I spent the afternoon finally sorting out the spreadsheet that has
been haunting me since March. Called Dad in the evening. He sounded tired but cheerful, and he has started going
to the swimming pool again, which the doctor has been telling him to do for a year. He wants to repaint the
kitchen in the summer and has already chosen a colour, a pale green he describes as the colour of the inside of
a cucumber. I told him I would come and help if he waits until August. Made soup from the vegetables that were
about to go soft, read two chapters of the novel Sara lent me, and went to bed early. Tomorrow, the dentist. I
have been trying not to think about it.

[museum guide]
The large painting on the far wall of this room shows a harbour at dawn, and it repays a few minutes of close
attention. The artist worked on it for almost three years, and the surviving sketchbooks show that he returned
to the same quay dozens of times at first light to study how the colours changed. Notice first the sky. It is
not blue at all but a sequence of pale yellows, pinks and greys, laid on in thin transparent layers so that the
canvas itself seems to glow through them. Now look at the water in the foreground. Up close the brushstrokes are
short, thick and almost crude, but from where you are standing they resolve into a surface that moves. The boats
on the left are drawn with great precision, every rope and pulley in place, while the buildings on the far shore
dissolve into haze; the contrast leads the eye from the near to the distant. Look for the small figure of a
woman on the quay, carrying a basket. She was added late, painted over a barrel that can still be seen in X-ray
photographs, and she gives the empty morning a human scale. When the painting was first shown, critics
complained that it looked unfinished. Today it is one of the most popular works in the collection.

[economics explainer: inflation]
Inflation is the rate at which the general level of prices rises, and it matters because it quietly changes what
money is worth. If prices rise by three percent a year, a salary that stays the same buys three percent less
each year, and savings kept in cash lose value at the same pace. Statistical offices measure inflation by
tracking the prices of a fixed basket of goods and services that a typical household buys, from bread and rent
to haircuts and train tickets, and comparing its cost from one month to the next. Several forces can push prices
up. When demand grows faster than the economy can produce, for example after a burst of government spending or
easy credit, sellers can raise prices without losing customers. When costs rise, because oil becomes more
expensive or a harvest fails, firms pass some of the increase on. Expectations matter too: if workers and
businesses expect high inflation, they ask for higher wages and set higher prices, which helps make the
expectation come true. Central banks try to keep inflation low and stable, often aiming for about two percent,
mainly by setting interest rates. Higher rates make borrowing more expensive, cool spending, and slowly bring
price rises down, though the effect takes many months to arrive and can cost jobs along the way.

[folk tale]
Long ago, in a village at the edge of a great marsh, there lived a miller who was so mean that he weighed every
sack of flour twice and still suspected he had given too much. One winter evening an old woman knocked at his
door, soaked and shivering, and asked for a crust of bread and a place by the fire. The miller told her that
bread cost money and fire cost wood, and shut the door in her face. His daughter, who had heard everything,
slipped out of the back of the house with half a loaf under her shawl, found the old woman on the road, and gave
it to her along with her own warm cloak. The old woman thanked her and said: when the water rises, follow the
white goose. The girl did not understand, but she remembered. In the spring the snow melted all at once and the
marsh swelled into a lake. In the night the water came over the fields and into the village, and the people fled
in the dark, not knowing which way was safe. The girl saw a white goose flying low over the rooftops and ran
after it, calling the neighbours to follow, and it led them up a hidden path to dry ground. The mill was swept
away. The miller, they say, learned generosity too late.

[speech]
Graduates, families, teachers: thank you for letting me speak on a day that belongs to you. I was asked to offer
advice, which is a dangerous request to make of anyone over fifty, so I will keep it to three things. The first
is that the plan you have today will almost certainly change, and that is not a failure. When I sat where you
are sitting, I was certain I would become a lawyer. I lasted one year in law school before I discovered that I
was happier in a laboratory, and the years I thought I had wasted turned out to be the reason I could later
explain my research to judges and politicians. Nothing you learn is wasted; it simply waits for its moment. The
second is to be generous with credit. Every good thing I have done was done with other people, and the
colleagues who shared praise freely were the ones everyone wanted to work with again. The third is to keep doing
something badly. Learn an instrument, a language, a sport in which you have no talent. Being a beginner keeps
you humble and curious, and it reminds you how the people you teach and lead feel every day. Congratulations.
You have earned this. Now go and be wonderfully, usefully wrong about your future.

[medical explainer: vaccines]
A vaccine teaches the immune system to recognise a germ before the body ever meets the real thing. The immune
system learns from experience. When a virus or bacterium enters the body for the first time, specialised white
blood cells slowly work out which molecules on its surface mark it as foreign, and they build up antibodies and
killer cells that target those molecules. This takes days, during which the infection can make a person very
ill. Afterwards, a small population of memory cells remains in the blood and lymph nodes for years, ready to
respond within hours if the same germ returns. A vaccine gives the immune system this first lesson without the
danger. Some vaccines contain a weakened or killed form of the germ; others contain only a single harmless piece
of it, such as a surface protein, or genetic instructions that let the body's own cells make that protein for a
short time. In each case the immune system reacts as though it had been infected, and memory cells form. The
sore arm, mild fever or tiredness that some people feel for a day or two afterwards is the sign of that
reaction, not of illness. Because memory can fade, some vaccines need booster doses, and those against
fast-changing viruses such as influenza are updated every year.
"""

# Unseen text: kinds that appear nowhere in CALIBRATION (see the module docstring).
_UNSEEN = """
[dialogue: at the garage] (lines)
MECHANIC: So what seems to be the trouble?
DRIVER: It makes a grinding noise when I brake. Not every time. Mostly in the mornings, when it's cold.
MECHANIC: Front or back?
DRIVER: Front, I think. Maybe the left side. It's hard to tell from inside.
MECHANIC: How long has it been doing it?
DRIVER: A couple of weeks. My brother said it was probably nothing, just rust on the discs after the rain.
MECHANIC: Could be. Rust usually goes after the first few stops, though. Does it go away once you've driven a bit?
DRIVER: No, that's the thing. It gets quieter but it doesn't stop. And yesterday the pedal felt a little soft.
MECHANIC: Soft how? Does it go down further than it used to?
DRIVER: A bit further, yes. I had to push harder at the lights on the hill.
MECHANIC: Right. I don't like the sound of that. When did you last have the pads changed?
DRIVER: Honestly? I don't know. I bought it second-hand last year, and the papers don't say.
MECHANIC: Okay. Leave it with me this afternoon. I'll put it on the lift, take the wheels off and look at the pads, the discs and the fluid. If the pads are down to the metal, that's your grinding, and it'll have scored the discs too.
DRIVER: Is that expensive?
MECHANIC: Pads aren't. Discs are more. I'll ring you before I do anything, and I'll tell you what it costs. Don't drive it further than you have to until then.
DRIVER: Thanks. Can I leave the keys at the desk?

[dialogue: planning a party] (lines)
"We need to decide on the date first," said Priya. "Everything else depends on it."
"Saturday the fourteenth," said Marco. "Everybody's free then. I asked."
"You asked everybody? Even Gran?"
"Even Gran. She said she'd come if we don't make her sit near the speakers."
"Fine. Saturday the fourteenth. Where, though? The flat's too small for thirty people."
"What about the community hall? It's cheap if you book before the end of the month."
"Is it still the one with the broken heating?"
"They fixed it. Jo had her daughter's birthday there in January and said it was warm."
"Okay, the hall. Food?"
"I thought we'd each cook something. You do the curry, I'll do the lasagne, and we ask people to bring desserts."
"That's how we ended up with nine cheesecakes last time."
"That's not a problem. That's a feature."
"Marco."
"All right, all right. We make a list and people sign up for what they bring. No duplicates."
"And music?"
"Sam has a playlist. Four hours, no repeats, and he promised nothing too loud before ten."
"Decorations?"
"Balloons, the lights from the garden, and the banner from Dad's sixtieth. We just cover up the sixty."
"You've thought about this more than I have."
"I've been planning it since March. Don't tell anyone."

[legal-like: terms of use]
1. Acceptance. By creating an account or using the Service, you agree to be bound by these Terms. If you do not
agree, you must not use the Service. 2. Eligibility. You must be at least sixteen years of age to use the
Service. By using it, you represent and warrant that you meet this requirement and that all information you
provide is accurate and complete. 3. Accounts. You are responsible for maintaining the confidentiality of your
login credentials and for all activity that occurs under your account. You shall notify the Provider without
undue delay of any unauthorised use. 4. Licence. Subject to your compliance with these Terms, the Provider
grants you a limited, non-exclusive, non-transferable, revocable licence to access and use the Service for your
personal, non-commercial purposes. 5. Restrictions. You shall not (a) copy, modify or distribute any part of the
Service except as expressly permitted herein; (b) reverse engineer or attempt to extract the source code of the
Service, save to the extent permitted by applicable law; (c) use the Service to transmit any material that is
unlawful, defamatory or infringes the rights of any third party; or (d) interfere with the security or proper
functioning of the Service. 6. Termination. The Provider may suspend or terminate your access at any time, with
or without notice, if you breach these Terms.

[legal-like: lease clauses]
THIS AGREEMENT is made between the Landlord and the Tenant named in Schedule 1 in respect of the Property
described in Schedule 2. 4.1 The Tenant shall pay the Rent monthly in advance on the first day of each calendar
month by standing order to the account nominated by the Landlord in writing. 4.2 If any Rent or other sum
payable under this Agreement remains unpaid fourteen days after the date on which it became due, the Tenant
shall pay interest on that sum at the rate of three per cent per annum above the base rate from the due date
until the date of payment. 5.1 The Tenant shall keep the interior of the Property in good and clean condition,
fair wear and tear excepted, and shall not make any alteration or addition to the Property without the prior
written consent of the Landlord, such consent not to be unreasonably withheld. 5.2 The Tenant shall not assign,
sublet or part with possession of the whole or any part of the Property. 6.1 The Landlord shall keep in repair
the structure and exterior of the Property and the installations for the supply of water, gas, electricity and
heating. 6.2 The Landlord or its agents may enter the Property upon giving not less than twenty-four hours'
written notice, at reasonable times of day, to inspect its condition or carry out repairs.

[code with comments: retry helper] (lines)
import random
import time
def retry(fn, attempts=5, base_delay=0.1, max_delay=5.0, retry_on=(IOError,)):
    '''Call fn() until it succeeds, waiting longer after each failure.
    The delay doubles after every failed attempt (exponential backoff) and is capped at max_delay.
    A random jitter of up to half the delay is added so that many clients that failed together
    do not all retry at the same instant and overload the server again.
    '''
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as error:
            # The last attempt re-raises: the caller must see the real error, not a silent None.
            if attempt == attempts:
                raise
            wait = min(delay, max_delay) * (1 + random.random() / 2)
            print(f"attempt {attempt} failed ({error!r}); retrying in {wait:.2f} s")
            time.sleep(wait)
            delay *= 2
# Example: fetch a page that sometimes times out.
# page = retry(lambda: http_get("https://example.org/status"), attempts=3)

[code with comments: configuration file] (lines)
# Server configuration. Lines starting with a hash are comments and are ignored.
[server]
host = 0.0.0.0        # listen on every interface; use 127.0.0.1 for local testing only
port = 8080
workers = 4           # one per CPU core is a good starting point
timeout_seconds = 30  # requests running longer than this are cancelled
[database]
url = postgres://app@db.internal:5432/orders
pool_size = 10        # keep below the database's max_connections divided by the number of servers
# Slow queries are logged with their plan so that missing indexes show up in the logs.
log_slow_queries = true
slow_query_ms = 250
[cache]
enabled = true
backend = redis
ttl_seconds = 600     # entries older than ten minutes are fetched again
# Never cache responses that depend on the logged-in user; see the note in docs/caching.md.
exclude_paths = /account, /basket, /checkout
[logging]
level = info          # debug is very verbose and slows the server noticeably
format = json
rotate_megabytes = 100
keep_files = 7

[list: packing list]
Packing list for the week in the mountains. Clothes: two pairs of walking trousers; three T-shirts that dry
quickly; one warm fleece; waterproof jacket with hood; waterproof over-trousers; five pairs of socks, wool;
thermal top for the evenings; sun hat; woolly hat; gloves. Footwear: walking boots, already worn in; light shoes
for the hut; gaiters if there is still snow on the pass. Equipment: rucksack, forty litres, with rain cover;
sleeping bag liner (the huts provide blankets); head torch and spare batteries; water bottles, two litres in
total; walking poles; map of the area at one to twenty-five thousand; compass; whistle; small knife. First aid:
plasters in several sizes; blister pads; bandage and tape; painkillers; antihistamines; sun cream, factor fifty;
lip balm; personal medicines for ten days, in case of delays. Food: breakfast is included at the huts; pack
lunches for the first two days; energy bars; nuts and dried fruit; tea bags; chocolate for emergencies, and for
non-emergencies. Documents: passport; insurance card and policy number; hut booking confirmations, printed; some
cash, because the huts do not take cards. Phone, charger and a small battery pack. Leave the route and expected
return date with the hotel in the valley.

[list: specification sheet]
Model: TR-40 cordless drill driver. Voltage: 18 V. Battery: 2.0 Ah lithium-ion, two supplied. Charging time: 45
minutes to full charge; indicator lights show level in three steps. No-load speed: 0 to 450 and 0 to 1,700
revolutions per minute, two gears. Maximum torque: 40 newton metres in hard joints, 22 in soft joints. Torque
settings: 20 plus drill mode. Chuck: 13 mm, keyless, single sleeve, with automatic spindle lock. Drilling
capacity: wood 35 mm, steel 13 mm, masonry not recommended. Weight: 1.4 kg with battery. Length: 190 mm.
Lighting: LED work light, switches on with the trigger and stays on for ten seconds after release. Noise: sound
pressure level 72 dB(A); wear ear protection for prolonged use. Vibration: below 2.5 metres per second squared.
Included in the box: drill, two batteries, charger, belt clip, double-ended screwdriver bit, carrying case,
instruction manual. Warranty: two years, extendable to three on registration within 30 days of purchase.
Compatible with all batteries of the same 18 V range. Operating temperature: 0 to 40 degrees Celsius; charge the
battery between 10 and 30 degrees. Storage: remove the battery and keep it in a dry place, ideally at about half
charge. Spare parts and accessories are available from authorised dealers.

[FAQ]
Q: How do I reset my password? A: Select "Forgot password" on the sign-in page and enter the email address
linked to your account. We will send a link that is valid for one hour. If the email does not arrive within ten
minutes, check your spam folder. Q: Can I change the email address on my account? A: Yes. Go to Settings, then
Account, then Email, and enter the new address. You will need to confirm the change from both the old and the
new address. Q: Why was my payment declined? A: The most common reasons are an expired card, a billing address
that does not match the one your bank holds, or a limit on online purchases set by your bank. Please check these
details before trying again. Q: How long does delivery take? A: Standard delivery takes three to five working
days. Express orders placed before two in the afternoon arrive the next working day. Q: Can I return an item? A:
You can return most items within thirty days of delivery, unused and in their original packaging. Print the
return label from your order page. Q: Do you ship abroad? A: We currently deliver to most countries in Europe.
Customs charges may apply outside the European Union and are paid by the recipient. Q: How do I close my
account? A: Write to our support team from the address registered with us.

[chat log] (lines)
[09:02] sam: morning all, is the build broken or is it just me
[09:03] lee: not just you, main has been red since about 8
[09:03] sam: great. any idea what did it?
[09:04] lee: looks like the dependency bump last night. the date parsing tests fail on the new version
[09:05] kai: that was me, sorry. it passed locally, I think I had the old version cached
[09:05] sam: no worries, happens. revert or fix forward?
[09:06] kai: fix forward if it's small. the new version treats two-digit years differently
[09:07] lee: I'd revert first so people can merge, then fix on a branch
[09:07] kai: fair. reverting now
[09:12] kai: revert is in, build running
[09:19] lee: green again
[09:19] sam: thanks. standup in ten?
[09:20] kai: yep. I'll have the fix up by lunch, will tag you both for review
[09:21] mira: hi, just catching up. do we still need the release notes by friday?
[09:22] sam: yes, friday end of day. I started a draft in the shared folder
[09:22] mira: cool, I'll add the search changes and the new export options
[09:23] lee: don't forget the breaking change in the API paging, customers will ask
[09:24] mira: good point, I'll put it at the top with a migration example
[09:30] sam: standup now, link in the channel topic
[09:31] kai: joining, my camera is off, the cat is sitting on the laptop

[verse]
The kettle sings before the house is light, / the window holds a square of paling grey, / and somewhere down the
hill a dog recites / the one long word it has for every day. / I used to think that mornings came to stay, /
that every road I walked would wait for me, / that friends would always live a street away / and summer ended
only by decree. / But seasons are a tide, and so are we. / The garden that my mother dug and sowed / is
someone's driveway now; the apple tree / went down the year the river overflowed. / Still, in the cupboard, in a
chipped blue jar, / she kept the seeds, and labelled what they are. / I planted three of them beside the door. /
Two failed. The third came up, and then came more, / a tangle of sweet peas along the rail / that climbed the
wire and would not be told. / They flower now in wind and sun and hail, / pink, white and purple, careless,
uncontrolled, / and every July, when they are at their height, / I cut a bunch and put it by the bed, / and the
whole room smells the way it did at night / when I was small and someone stroked my head / and said that nothing
lost is really gone, / it goes to ground, and waits, and then goes on.

[meeting minutes]
Minutes of the residents' association committee meeting, held in the library annexe. Present: chair, secretary,
treasurer, four committee members. Apologies: two members. Item 1, minutes of the previous meeting: approved
without changes. Item 2, matters arising: the council has replied about the broken street lights on the east
side; repairs are scheduled within six weeks. Secretary to chase if not done by the next meeting. Item 3,
treasurer's report: balance slightly higher than last quarter after the spring fair; the insurance renewal is
due next month and the premium has risen by eight percent. Agreed to get two other quotes before renewing.
Action: treasurer. Item 4, playground: survey returned sixty-two responses, most in favour of new swings and a
shaded bench. Quote received from one supplier; committee asked for at least one more. Concern raised about the
cost of surfacing. Action: chair to contact the council's parks officer about grants. Item 5, summer event: date
fixed for the last Saturday of June. Volunteers needed for setup, the barbecue and clearing up; a sign-up sheet
will be posted on the noticeboard and online. Item 6, any other business: complaint about parking on the green
verges; secretary to draft a polite notice. Next meeting: second Tuesday of next month, same place, seven
thirty.

[changelog]
Release notes, version 3.2.0. New: export any report as CSV or as a spreadsheet with one sheet per section; the
export dialog remembers the last format used. New: keyboard shortcuts for the most common actions; press the
question mark key to list them. New: dark theme, which follows the operating system setting by default. Changed:
search now matches partial words, so "inv" finds "invoice" and "inventory"; exact matching is available with
quotation marks. Changed: the dashboard loads about forty percent faster for accounts with many projects,
because charts are now drawn only when they scroll into view. Changed: the minimum supported browser versions
are now those released in the last two years. Deprecated: the old paging parameters of the API, page and
per_page, still work but will be removed in version 4.0; use the cursor parameter instead, as described in the
migration guide. Fixed: dates before 1970 were shown one day early in some time zones. Fixed: uploading a file
with a very long name no longer fails silently. Fixed: the notification counter sometimes stayed at one after
all notifications had been read. Fixed: printing a report with more than one hundred rows cut off the last page.
Security: updated the image library to address a reported vulnerability in the handling of malformed files.
Thanks to everyone who reported issues.

[glossary]
Glossary of sailing terms. Aft: towards the back of the boat. Beam: the width of a boat at its widest point;
also, a wind on the beam blows from the side. Bow: the front of the boat. Boom: the horizontal pole along the
bottom of the mainsail, which swings across the boat when changing direction, so keep your head down. Cleat: a
fitting with two horns around which a rope is secured. Gybe: to change direction by turning the stern through
the wind, which swings the boom across quickly. Halyard: a rope used to raise a sail. Heel: the sideways lean of
a boat under the pressure of wind on the sails. Jib: a triangular sail in front of the mast. Knot: a unit of
speed, one nautical mile per hour; also a way of tying a rope. Leeward: the side away from the wind. Mainsheet:
the rope that controls the angle of the mainsail. Port: the left side of the boat when facing forward, marked at
night by a red light. Reef: to reduce the area of a sail in strong wind. Rudder: the blade at the stern that
steers the boat. Starboard: the right side when facing forward, marked by a green light. Stern: the back of the
boat. Tack: to change direction by turning the bow through the wind. Windward: the side from which the wind is
blowing.
"""

CALIBRATION_KINDS = ["expository: baking", "expository: tide pools", "expository: chess", "expository: weather"]
for _kind, _text in _labelled(_MORE_CALIBRATION):
    CALIBRATION_KINDS.append(_kind)
    CALIBRATION.append(_text)
UNSEEN_KINDS = [kind for kind, _ in _labelled(_UNSEEN)]
UNSEEN = [text for _, text in _labelled(_UNSEEN)]

SAMPLE = "\n\n".join(CALIBRATION[:2] + EVALUATION[:2])
