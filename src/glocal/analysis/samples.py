"""Built-in sample text: original paragraphs of about 256 word-piece tokens each.

``CALIBRATION`` is the text a conversion plan is measured on; ``EVALUATION``
is different text the converted model is judged on; ``SAMPLE`` is what
``glocal inspect`` reads when no file is given. The paragraphs cover unlike
topics and styles so that head statistics do not reflect one genre.

Example:
    >>> from glocal.analysis.samples import CALIBRATION, EVALUATION
    >>> len(CALIBRATION) >= 4 and len(EVALUATION) >= 4
    True
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

SAMPLE = "\n\n".join(CALIBRATION[:2] + EVALUATION[:2])
