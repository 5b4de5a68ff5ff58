"""Build (or check) the project's SQuAD v1.1-format question-answering set over the bundled Wikipedia sample.

The contexts are runs of consecutive sentences of an article of the English Wikipedia sample that ships in
the gensim wheel (``groupbert.data.corpus.load_wikipedia_sample``), joined with single spaces exactly as
``" ".join(document.sentences)`` joins them, so every context is a verbatim substring of the cleaned
article text. The questions and answers below were written by hand for this project.

Each answer is given as its text; ``answer_start`` is computed by locating the text in the context. A text
must occur exactly once in the context (as a whole-word match: not inside a longer word) unless it is given
as ``(text, k)``, which picks the k-th such occurrence (0-based). Anything that cannot be located, or is
ambiguous without an index, makes the build fail. Train questions carry one answer; dev questions carry
one to three reference answers (a list), each an exact span of the context.

Usage (from the repository root)::

    .venv/bin/python groupbert/squad/data/build_wiki_qa.py          # write wiki_qa_train.json / wiki_qa_dev.json
    .venv/bin/python groupbert/squad/data/build_wiki_qa.py --check  # rebuild in memory, compare with the files
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Union

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "wiki_qa_train.json"
DEV_FILE = HERE / "wiki_qa_dev.json"

MIN_CONTEXT_WORDS = 50
MAX_CONTEXT_WORDS = 220

Answer = Union[str, tuple]

# --------------------------------------------------------------------------------------------------
# The hand-written set. "sentences": (first, end) indices into Document.sentences, end exclusive;
# "starts_with": the opening words of the context, so a change in the sentence splitter fails loudly.
# --------------------------------------------------------------------------------------------------

ARTICLES: list[dict] = [
    # ============================================ train ============================================
    {
        "title": "Alabama",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 5),
                "starts_with": "Alabama is a state located",
                "qas": [
                    ("In which region of the United States is Alabama located?", "southeastern"),
                    ("Which state borders Alabama to the north?", "Tennessee"),
                    ("Which body of water lies south of Alabama?", "the Gulf of Mexico"),
                    ("Where does Alabama rank among the 50 states by population?", "24th"),
                    ("How long are Alabama's navigable inland waterways?", "1300 mi"),
                    (
                        "Continued dependence on what caused Alabama economic hardship before World War II?",
                        "agriculture",
                    ),
                ],
            },
            {
                "sentences": (11, 17),
                "starts_with": "Alabama is nicknamed",
                "qas": [
                    ("What nickname does Alabama take from its state bird?", "the Yellowhammer State"),
                    ("What is the state tree of Alabama?", "the longleaf pine"),
                    ("What is Alabama's state flower?", "the camellia"),
                    ("What is the capital of Alabama?", "Montgomery"),
                    ("Which is the largest city in Alabama by population?", "Birmingham"),
                    ("Which Alabama city is the largest by total land area?", "Huntsville"),
                    ("What is the oldest city in Alabama?", "Mobile"),
                    ("In what year was Mobile founded?", "1702"),
                ],
            },
        ],
    },
    {
        "title": "Abraham Lincoln",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 7),
                "starts_with": "Abraham Lincoln (February 12, 1809",
                "qas": [
                    ("When was Abraham Lincoln born?", "February 12, 1809"),
                    ("Which number President of the United States was Lincoln?", "16th"),
                    ("In which month and year did Lincoln's presidency begin?", "March 1861"),
                    ("Where was Lincoln born?", "Hodgenville, Kentucky"),
                    ("How long did Lincoln serve in the Illinois House of Representatives?", "twelve years"),
                    ("In what year was Lincoln elected to the United States House of Representatives?", "1846"),
                    ("To which city did Lincoln return to resume his law practice?", "Springfield"),
                ],
            },
            {
                "sentences": (7, 13),
                "starts_with": "Reentering politics in 1854",
                "qas": [
                    ("In what year did Lincoln reenter politics?", "1854"),
                    ("Which party did Lincoln help to build?", "the new Republican Party"),
                    ("Who was Lincoln's opponent in the 1858 debates?", "Stephen A. Douglas"),
                    ("How many southern slave states seceded after Lincoln's victory?", "seven"),
                    ("What did the seceding slave states form?", "the Confederate States of America"),
                    ("Which fort did the Confederates attack?", "Fort Sumter"),
                    ("On what date did the Confederate attack on Fort Sumter take place?", "April 12, 1861"),
                ],
            },
        ],
    },
    {
        "title": "Aristotle",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (13, 18),
                "starts_with": "Some of Aristotle's zoological observations",
                "qas": [
                    ("Aristotle made zoological observations on the reproductive arm of which animal?", "the octopus"),
                    ("Aristotle's works contain the earliest known formal study of what?", ("logic", 0)),
                    ("Which tradition of the Catholic Church did Aristotelianism especially influence?",
                     "the scholastic tradition"),
                    ("What did medieval Muslim intellectuals revere Aristotle as?", "The First Teacher"),
                    ("What modern development renewed interest in Aristotle's ethics?", "virtue ethics"),
                ],
            },
            {
                "sentences": (20, 25),
                "starts_with": "Aristotle, whose name means",
                "qas": [
                    ("What does the name Aristotle mean?", "the best purpose"),
                    ("In what year was Aristotle born?", "384 BC"),
                    ("In which town was Aristotle born?", "Stagira"),
                    ("How far is Stagira from modern-day Thessaloniki?", "about 55 km"),
                    ("What was the name of Aristotle's father?", "Nicomachus"),
                    ("To which king was Aristotle's father the personal physician?", "King Amyntas of Macedon"),
                    ("At about what age did Aristotle move to Athens?", "eighteen"),
                    ("How long did Aristotle remain at Plato's Academy?", "nearly twenty years"),
                    ("When did Aristotle leave Athens?", "348/47 BC"),
                ],
            },
        ],
    },
    {
        "title": "An American in Paris",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 6),
                "starts_with": "An American in Paris is a jazz-influenced",
                "qas": [
                    ("Who composed An American in Paris?", "George Gershwin"),
                    ("In what year was An American in Paris written?", ("1928", 0)),
                    ("Which conductor commissioned An American in Paris?", "Walter Damrosch"),
                    ("Besides celesta and saxophones, what did Gershwin add to the orchestra?", "automobile horns"),
                    ("In which venue did the piece premiere?", "Carnegie Hall"),
                    ("Which orchestra played at the premiere?", "the New York Philharmonic"),
                    ("On what date did Gershwin complete the orchestration?", "November 18"),
                ],
            },
            {
                "sentences": (18, 22),
                "starts_with": "Gershwin greeted Ravel in New York",
                "qas": [
                    ("When did Gershwin greet Ravel in New York?", "February 1928"),
                    ("In which city did Gershwin join Ravel again later in the tour?", "Los Angeles"),
                    ("With whom did Ravel and Gershwin have lunch in Beverly Hills?", "Chaplin"),
                    ("When did Gershwin return to Paris?", "March 1928"),
                    ("To whom did Ravel write an introductory letter praising Gershwin?", "Boulanger"),
                ],
            },
        ],
    },
    {
        "title": "Ayn Rand",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (2, 10),
                "starts_with": "Born and educated in Russia",
                "qas": [
                    ("In what year did Rand move to the United States?", "1926"),
                    ("When did Rand have a play produced on Broadway?", "1935–1936"),
                    ("Which 1943 novel made Rand famous?", "The Fountainhead"),
                    ("What is Rand's best-known work?", "Atlas Shrugged"),
                    ("In what year did Rand publish Atlas Shrugged?", "1957"),
                    ("What did Rand advocate as the only means of acquiring knowledge?", "reason"),
                    ("Which economic system did Rand support?", "laissez-faire capitalism"),
                ],
            },
            {
                "sentences": (15, 22),
                "starts_with": "Rand was born Alisa",
                "qas": [
                    ("When was Ayn Rand born?", "February 2, 1905"),
                    ("In which city was Rand born?", "Saint Petersburg"),
                    ("What was the profession of Rand's father?", "pharmacist"),
                    ("At what age did Rand begin writing screenplays?", "eight"),
                    ("Which school did Rand attend?", "Stoiunina Gymnasium"),
                    ("Who was Rand's closest friend at school?", "Olga"),
                    ("Whom did Rand favor during the February Revolution?", "Alexander Kerensky"),
                ],
            },
        ],
    },
    {
        "title": "Algeria",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 6),
                "starts_with": "Algeria (al-Jazā'ir; Dzayer)",
                "qas": [
                    ("What is the capital of Algeria?", "Algiers"),
                    ("What is the area of Algeria?", "2381741 km2"),
                    ("How does Algeria rank among the world's countries by size?", "tenth-largest"),
                    ("Which country borders Algeria to the east?", "Libya"),
                    ("How many provinces does Algeria consist of?", "48"),
                    ("Who has been President of Algeria since 1999?", "Abdelaziz Bouteflika"),
                ],
            },
            {
                "sentences": (10, 16),
                "starts_with": "Algeria is a regional and middle power",
                "qas": [
                    ("What does Algeria supply in large amounts to Europe?", ("natural gas", 0)),
                    ("According to OPEC, where does Algeria rank worldwide in oil reserves?", "17th"),
                    ("What is the name of Algeria's national oil company?", "Sonatrach"),
                    ("From which country does Algeria import most of its weapons?", "Russia"),
                    ("Of which organization is Algeria a founding member?", "the Maghreb Union"),
                ],
            },
        ],
    },
    {
        "title": "Andre Agassi",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (7, 12),
                "starts_with": "Agassi was the first male player",
                "qas": [
                    ("On how many different surfaces did Agassi win the four Grand Slam tournaments?", "three"),
                    ("In what year did Agassi win the French Open?", ("1999", 0)),
                    ("How many ATP Masters Series titles did Agassi win?", "17"),
                    ("In what year did Agassi first reach the World No. 1 ranking?", ("1995", 1)),
                    ("To what ranking did Agassi sink in 1997?", "World No. 141"),
                    ("What nickname was Agassi known by?", "The Punisher"),
                ],
            },
            {
                "sentences": (12, 17),
                "starts_with": "After suffering from sciatica",
                "qas": [
                    ("What condition, caused by two bulging discs, did Agassi suffer from?", "sciatica"),
                    ("When did Agassi retire from professional tennis?", "September 3, 2006"),
                    ("Who beat Agassi in his last match at the US Open?", "Benjamin Becker"),
                    ("How much money has the Andre Agassi Charitable Foundation raised?", "over $60 million"),
                    ("In which city is the Andre Agassi College Preparatory Academy?", ("Las Vegas", 0)),
                    ("Whom has Agassi been married to since 2001?", "Steffi Graf"),
                ],
            },
        ],
    },
    {
        "title": "Animal Farm",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 4),
                "starts_with": "Animal Farm is an allegorical",
                "qas": [
                    ("Who wrote Animal Farm?", "George Orwell"),
                    ("When was Animal Farm first published?", "17 August 1945"),
                    ("Which revolution does the book reflect events leading up to?", "the Russian Revolution of 1917"),
                    ("How is Orwell's own political position described?", "a democratic socialist"),
                    ("Which war shaped Orwell's hostility to Stalinism?", "the Spanish Civil War"),
                ],
            },
            {
                "sentences": (8, 13),
                "starts_with": "Orwell wrote the book between November 1943",
                "qas": [
                    ("When did Orwell finish writing Animal Farm?", "February 1944"),
                    ("Which of Orwell's own publishers rejected the manuscript?", "Victor Gollancz"),
                    ("What did the wartime alliance give way to?", "the Cold War"),
                    ("Which magazine listed Animal Farm among the 100 best English-language novels?", "Time"),
                    ("At what number did Animal Farm feature on the Modern Library List?", "31"),
                    ("Which award did Animal Farm win in 1996?", "a Retrospective Hugo Award"),
                ],
            },
            {
                "sentences": (13, 18),
                "starts_with": "Old Major, the old boar",
                "qas": [
                    ("Which animal summons the others to a meeting on the Manor Farm?", "Old Major"),
                    ("What is the revolutionary song Major teaches the animals called?", "Beasts of England"),
                    ("Which two pigs take command after Major dies?", "Snowball and Napoleon"),
                    ("Which farmer do the animals drive from the farm?", "Mr. Jones"),
                    ("What is the most important of the Seven Commandments of Animalism?", "All animals are equal."),
                    ("Which pig educates the young puppies?", ("Napoleon", 1)),
                ],
            },
        ],
    },
    {
        "title": "Alaska",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (4, 11),
                "starts_with": "Alaska is the largest state",
                "qas": [
                    ("What was the estimated population of Alaska in 2015?", "738,432"),
                    ("Where do about half of Alaska's residents live?", "the Anchorage metropolitan area"),
                    ("From whom did the United States purchase Alaska?", "the Russian Empire"),
                    ("On what date did the United States purchase Alaska?", "March 30, 1867"),
                    ("How much did the United States pay for Alaska?", "7.2 million U.S. dollars"),
                    ("When was Alaska organized as a territory?", "May 11, 1912"),
                    ("As which number state was Alaska admitted?", "49th"),
                    ("When was Alaska admitted as a state?", "January 3, 1959"),
                ],
            },
            {
                "sentences": (16, 22),
                "starts_with": "Alaska is the only non-contiguous",
                "qas": [
                    ("What is the capital city of Alaska?", "Juneau"),
                    ("How much of British Columbia separates Alaska from Washington?", "about 500 mi"),
                    ("What is the contiguous U.S. often called?", "the Lower 48"),
                    ("In which strait do the territorial waters of Alaska and Russia touch?", "the Bering Strait"),
                    ("How far apart are Big Diomede Island and Little Diomede Island?", "3 mi"),
                    ("Which ocean lies to the north of Alaska?", "the Arctic Ocean"),
                ],
            },
        ],
    },
    {
        "title": "Apollo 11",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (2, 6),
                "starts_with": "Armstrong became the first to step onto the lunar surface",
                "qas": [
                    ("On what date did Armstrong first step onto the lunar surface?", "July 21"),
                    ("How long after Armstrong did Aldrin join him on the lunar surface?", "about 20 minutes"),
                    ("How long did the two astronauts spend together outside the spacecraft?",
                     "about two and a quarter hours"),
                    ("How much lunar material did the astronauts collect?", "47.5 lb"),
                    ("Who piloted the command spacecraft alone in lunar orbit?", "Michael Collins"),
                    ("Which rocket launched Apollo 11?", "a Saturn V rocket"),
                    ("From which space center was Apollo 11 launched?", "Kennedy Space Center"),
                    ("On what date was Apollo 11 launched?", "July 16"),
                    ("Apollo 11 was which manned mission of NASA's Apollo program?", "the fifth manned mission"),
                ],
            },
            {
                "sentences": (7, 13),
                "starts_with": "After being sent toward the Moon",
                "qas": [
                    ("How many days did the astronauts travel before entering lunar orbit?", "three days"),
                    ("Where did Armstrong and Aldrin land the Lunar Module?", "the Sea of Tranquility"),
                    ("How long did Armstrong and Aldrin stay on the lunar surface?", "about 21½ hours"),
                    ("In which ocean did the Apollo 11 crew land on their return?", "the Pacific Ocean"),
                    ("On what date did the crew return to Earth?", "July 24"),
                    ("Which president proposed the goal of landing a man on the Moon?", "John F. Kennedy"),
                    ("What did Apollo 11 effectively end?", "the Space Race"),
                ],
            },
        ],
    },
    {
        "title": "Andrei Tarkovsky",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 5),
                "starts_with": "Andrei Arsenyevich Tarkovsky",
                "qas": [
                    ("When was Andrei Tarkovsky born?", "4 April 1932"),
                    ("In what year was Andrei Rublev released?", "1966"),
                    ("Which Tarkovsky film came out in 1972?", "Solaris"),
                    ("How many feature films did Tarkovsky make?", "seven"),
                    ("In which country was Nostalghia produced?", "Italy"),
                    ("What was the last film Tarkovsky made?", "The Sacrifice"),
                    ("What are works made in a similar way to Tarkovsky's described as?", "Tarkovskian"),
                ],
            },
            {
                "sentences": (10, 19),
                "starts_with": "In 1937, his father left the family",
                "qas": [
                    ("In what year did Tarkovsky's father leave the family?", "1937"),
                    ("What was the name of Tarkovsky's sister?", "Marina"),
                    ("What work did Tarkovsky's mother do in Moscow?", "proofreader"),
                    ("Which school did Tarkovsky enroll at in 1939?", "the Moscow School № 554"),
                    ("In what year did the family return to Moscow?", "1943"),
                    ("Which poet was one of Tarkovsky's classmates?", "Andrey Voznesensky"),
                    ("Which instrument did Tarkovsky study at a music school?", "piano"),
                    ("On which street did the family live?", "Shchipok Street"),
                    ("What illness kept Tarkovsky in hospital from 1947 to 1948?", "tuberculosis"),
                ],
            },
        ],
    },
    {
        "title": "Aardvark",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 7),
                "starts_with": "The aardvark (Orycteropus afer)",
                "qas": [
                    ("To which continent is the aardvark native?", "Africa"),
                    ("The aardvark is the only living species of which order?", ("Tubulidentata", 0)),
                    ("What does the aardvark use its long pig-like snout for?", "to sniff out food"),
                    ("What does the aardvark feed on?", "ants and termites"),
                    ("What does the aardvark dig with?", "its sharp claws and powerful legs"),
                    ("What rating does the IUCN give the aardvark?", "least concern"),
                ],
            },
            {
                "sentences": (7, 12),
                "starts_with": "The aardvark is sometimes colloquially called",
                "qas": [
                    ("After which place is the aardvark called the \"Cape anteater\"?", "the Cape of Good Hope"),
                    ("From which language does the name \"aardvark\" come?", "Afrikaans"),
                    ("What does the name \"aardvark\" mean?", "earth pig"),
                    ("What does the name Orycteropus mean?", "burrowing foot"),
                    ("Where does the name of the order Tubulidentata come from?", "the tubule style teeth"),
                    ("In which family is Orycteropus the sole surviving genus?", "Orycteropodidae"),
                ],
            },
        ],
    },
    {
        "title": "Atlantic Ocean",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (8, 14),
                "starts_with": "The Atlantic Ocean occupies an elongated",
                "qas": [
                    ("What shape is the basin of the Atlantic Ocean?", "S-shaped"),
                    ("Which continents lie to the east of the Atlantic?", "Eurasia and Africa"),
                    ("What divides the Atlantic into the North Atlantic and the South Atlantic?", "The equator"),
                    ("What bounds the Atlantic Ocean on the west?", "North and South America"),
                    ("Which ocean lies to the southeast of the Atlantic?", "the Indian Ocean"),
                    ("Through which strait does the Atlantic connect to the Arctic Ocean?", "the Denmark Strait"),
                    ("Which sea does the Atlantic connect with at the Strait of Gibraltar?", "the Mediterranean Sea"),
                ],
            },
            {
                "sentences": (14, 22),
                "starts_with": "In the southeast, the Atlantic merges",
                "qas": [
                    ("Which meridian defines the border between the Atlantic and the Indian Ocean?",
                     "The 20° East meridian"),
                    ("From which cape does the 20° East meridian border run south?", "Cape Agulhas"),
                    ("What connects the Atlantic to the Pacific in the southwest?", "the Drake Passage"),
                    ("Which man-made waterway links the Atlantic and the Pacific?", "Panama Canal"),
                    ("What share of Earth's surface does the Atlantic cover?", "approximately 22%"),
                    ("What is the area of the Atlantic without its adjacent seas?", "82400000 km2"),
                ],
            },
        ],
    },
    {
        "title": "Albania",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (5, 13),
                "starts_with": "The modern Republic became independent",
                "qas": [
                    ("The collapse of which empire led to Albania's independence?", "the Ottoman Empire"),
                    ("In what year did Albania declare independence?", "1912"),
                    ("Which country invaded Albania in 1939?", "Italy"),
                    ("What did the Italian invasion form?", "Greater Albania"),
                    ("In what year did Greater Albania become a Nazi German protectorate?", "1943"),
                    ("Who led the socialist People's Republic of Albania?", "Enver Hoxha"),
                    ("In what year was the Socialist Republic dissolved?", "1991"),
                ],
            },
            {
                "sentences": (13, 20),
                "starts_with": "The country's capital, Tirana",
                "qas": [
                    ("What is the capital of Albania?", "Tirana"),
                    ("What is the metropolitan population of Tirana?", "almost 800,000 people"),
                    ("Roughly how many Albanians are there?", "around 2.9 million"),
                    ("Which sector dominates Albania's economy?", "the service sector"),
                    ("Which military alliance is Albania a member of?", "NATO"),
                    ("Albania is an official candidate for membership of which union?", "the European Union"),
                ],
            },
        ],
    },
    {
        "title": "Azerbaijan",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 7),
                "starts_with": "Azerbaijan, officially the Republic of Azerbaijan",
                "qas": [
                    ("Which sea bounds Azerbaijan to the east?", "the Caspian Sea"),
                    ("Which country borders Azerbaijan to the north?", "Russia"),
                    ("What is the name of Azerbaijan's exclave?", "Nakhchivan"),
                    ("In what year did the Azerbaijan Democratic Republic proclaim its independence?", "1918"),
                    ("When was Azerbaijan incorporated into the Soviet Union?", "1920"),
                    ("As what was Azerbaijan incorporated into the Soviet Union?",
                     "the Azerbaijan Soviet Socialist Republic"),
                    ("On what date did Azerbaijan proclaim its independence from the USSR?", "30 August 1991"),
                ],
            },
            {
                "sentences": (10, 17),
                "starts_with": "The country is a member state of the Council of Europe",
                "qas": [
                    ("How many independent Turkic states are there?", "six"),
                    ("With how many countries does Azerbaijan have diplomatic relations?", "158"),
                    ("In how many international organizations does Azerbaijan hold membership?", "38"),
                    ("Since what year has Azerbaijan been a member of the United Nations?", "1992"),
                    ("When was Azerbaijan elected to the Human Rights Council?", "9 May 2006"),
                    ("Which religion do the majority of people in Azerbaijan adhere to?", "Shia Islam"),
                ],
            },
        ],
    },
    {
        "title": "Angola",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (3, 10),
                "starts_with": "The capital and largest city of Angola",
                "qas": [
                    ("What is the capital and largest city of Angola?", "Luanda"),
                    ("From what century did the Portuguese establish coastal settlements in Angola?",
                     "the 16th century"),
                    ("When did European settlers begin to establish themselves in Angola's interior?",
                     "the 19th century"),
                    ("In what year did Angola achieve independence?", "1975"),
                    ("Until what year did Angola's civil war last?", "2002"),
                    ("What kind of state has Angola become since the civil war?", "unitary presidential republic"),
                ],
            },
            {
                "sentences": (13, 19),
                "starts_with": "Angola is a member state of the United Nations",
                "qas": [
                    ("How many people live in Angola?", "24.3 million"),
                    ("Which religion predominates in Angolan culture?", "Roman Catholicism"),
                    ("What was the Portuguese colonial name for Angola?", "Reino de Angola"),
                    ("In what year was Dias de Novais's charter?", "1571"),
                    ("From which title was the name Angola derived?", "ngola"),
                    ("Who held the title ngola?", "the kings of Ndongo"),
                    ("Between which rivers did the kingdom of Ndongo lie?", "the Kwanza and Lukala Rivers"),
                ],
            },
        ],
    },
    {
        "title": "Alberta",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 6),
                "starts_with": "Alberta is a western province of Canada",
                "qas": [
                    ("What was Alberta's estimated population as of July 1, 2015?", "4,196,457"),
                    ("On what date was Alberta established as a province?", "September 1, 1905"),
                    ("Who has been premier of Alberta since May 2015?", "Rachel Notley"),
                    ("Which province borders Alberta to the west?", "British Columbia"),
                    ("Which province borders Alberta to the east?", ("Saskatchewan", 1)),
                    ("Which US state borders Alberta to the south?", "Montana"),
                ],
            },
            {
                "sentences": (7, 14),
                "starts_with": "Alberta's capital Edmonton",
                "qas": [
                    ("What is the capital of Alberta?", ("Edmonton", 0)),
                    ("Which is the largest city in Alberta?", ("Calgary", 0)),
                    ("How far south of the capital is Calgary?", "About 290 km"),
                    ("How many census agglomerations does Alberta have?", "16"),
                    ("After whom is Alberta named?", "Princess Louise Caroline Alberta"),
                    ("Whose wife was Princess Louise?", "the Marquess of Lorne"),
                    ("Which lake was named in Princess Louise's honour?", "Lake Louise"),
                ],
            },
        ],
    },
    {
        "title": "Arthur Schopenhauer",
        "split": "train",
        "paragraphs": [
            {
                "sentences": (0, 4),
                "starts_with": "Arthur Schopenhauer (22 February 1788",
                "qas": [
                    ("When was Arthur Schopenhauer born?", "22 February 1788"),
                    ("What is Schopenhauer's best-known work?", "The World as Will and Representation"),
                    ("In what year was The World as Will and Representation published?", "1818"),
                    ("Whose transcendental idealism did Schopenhauer proceed from?", "Immanuel Kant"),
                    ("Schopenhauer's system is described as an exemplary manifestation of what?",
                     "philosophical pessimism"),
                    ("Which contemporaneous philosophies did Schopenhauer reject?", "German idealism"),
                ],
            },
            {
                "sentences": (9, 18),
                "starts_with": "When Danzig became part of Prussia",
                "qas": [
                    ("To which city did Heinrich move in 1793?", "Hamburg"),
                    ("Which instrument did Arthur start playing as early as 1799?", "the flute"),
                    ("In what year did Schopenhauer's father die?", "1805"),
                    ("What was the name of Schopenhauer's sister?", "Adele"),
                    ("To which city did Schopenhauer's mother move to pursue her writing career?", "Weimar"),
                    ("Which university did Schopenhauer enter in 1809?", "the University of Göttingen"),
                    ("Under whom did Schopenhauer study metaphysics and psychology?", "Gottlob Ernst Schulze"),
                    ("Which book was written by Gottlob Ernst Schulze?", "Aenesidemus"),
                ],
            },
        ],
    },
    # ============================================= dev =============================================
    {
        "title": "Apollo 8",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (0, 3),
                "starts_with": "Apollo 8, the second human spaceflight",
                "qas": [
                    ("When was Apollo 8 launched?", ["December 21, 1968", "on December 21, 1968"]),
                    ("Who was the commander of Apollo 8?", ["Frank Borman", "Commander Frank Borman"]),
                    ("Who was the Command Module Pilot of Apollo 8?", ["James Lovell"]),
                    ("Who was the Lunar Module Pilot of Apollo 8?", ["William Anders"]),
                    ("What sight were the Apollo 8 crew the first to witness?", ["Earthrise"]),
                    ("Apollo 8 was the first manned launch of which rocket?", ["Saturn V", "the Saturn V rocket"]),
                    ("From where was Apollo 8 launched?",
                     ["the Kennedy Space Center", "Kennedy Space Center", "the Kennedy Space Center, Florida"]),
                ],
            },
            {
                "sentences": (6, 12),
                "starts_with": "Apollo 8 took three days",
                "qas": [
                    ("How long did Apollo 8 take to travel to the Moon?", ["three days"]),
                    ("How many times did Apollo 8 orbit the Moon?", ["ten times", "ten"]),
                    ("From which book did the crew read during the Christmas Eve broadcast?",
                     ["the Book of Genesis", "Book of Genesis", "Genesis"]),
                    ("How many verses did the crew read in their broadcast?", ["10", "the first 10 verses"]),
                    ("When did the Apollo 8 astronauts return to Earth?",
                     ["December 27, 1968", "on December 27, 1968"]),
                    ("Where did the Apollo 8 spacecraft splash down?",
                     ["the Northern Pacific Ocean", "Northern Pacific Ocean"]),
                    ("What did Time magazine name the Apollo 8 crew?", ["\"Men of the Year\"", "Men of the Year"]),
                ],
            },
            {
                "sentences": (12, 16),
                "starts_with": "Lovell was originally the CMP",
                "qas": [
                    ("Who was originally the prime crew's Command Module Pilot?", ["Michael Collins", ("Collins", 0)]),
                    ("When was Collins replaced?", ["July 1968", "in July 1968"]),
                    ("What injury forced Collins off the crew?",
                     ["a cervical disc herniation", "cervical disc herniation"]),
                    ("On which missions had Lovell flown before Apollo 8?", ["Gemini VII and Gemini XII"]),
                    ("Which mission had Lovell previously commanded?", [("Gemini XII", 1)]),
                ],
            },
        ],
    },
    {
        "title": "Albert Einstein",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (10, 18),
                "starts_with": "In 1917, Einstein applied",
                "qas": [
                    ("In what year did Einstein use general relativity to model the large-scale structure of the "
                     "universe?", ["1917", "In 1917"]),
                    ("Who came to power in Germany in 1933?", ["Adolf Hitler", "Hitler"]),
                    ("Where had Einstein been a professor in Germany?",
                     ["the Berlin Academy of Sciences", "Berlin Academy of Sciences"]),
                    ("When did Einstein become an American citizen?", ["1940", "in 1940"]),
                    ("To which president did Einstein endorse a letter on the eve of World War II?",
                     ["President Franklin D. Roosevelt", "Franklin D. Roosevelt"]),
                    ("What did the letter to Roosevelt eventually lead to?",
                     ["the Manhattan Project", "Manhattan Project"]),
                    ("With which British philosopher did Einstein sign a manifesto on nuclear weapons?",
                     ["Bertrand Russell"]),
                    ("With which institution was Einstein affiliated until his death?",
                     ["the Institute for Advanced Study", "Institute for Advanced Study"]),
                    ("Where is the Institute for Advanced Study located?", ["Princeton, New Jersey", "Princeton"]),
                ],
            },
            {
                "sentences": (18, 22),
                "starts_with": "Einstein published more than 300",
                "qas": [
                    ("How many scientific papers did Einstein publish?", ["more than 300", "300"]),
                    ("How many unique documents did the released Einstein papers comprise?",
                     ["more than 30,000", "30,000", "more than 30,000 unique documents"]),
                    ("When was the release of Einstein's papers announced?", ["5 December 2014", "On 5 December 2014"]),
                    ("What is the word \"Einstein\" synonymous with?", ["\"genius\"", "genius"]),
                    ("In which city was Einstein born?", ["Ulm"]),
                    ("On what date was Einstein born?", ["14 March 1879", "on 14 March 1879"]),
                ],
            },
        ],
    },
    {
        "title": "Aruba",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (0, 8),
                "starts_with": "Aruba is a constituent country",
                "qas": [
                    ("Of which kingdom is Aruba a constituent country?",
                     [("the Kingdom of the Netherlands", 0), ("Kingdom of the Netherlands", 0)]),
                    ("How far is Aruba from the coast of Venezuela?", ["29 km", "29 km north"]),
                    ("How long is Aruba from its northwestern to its southeastern end?", ["32 km"]),
                    ("Which two islands form the ABC islands together with Aruba?", ["Bonaire and Curaçao"]),
                    ("What single nationality do the citizens of the Kingdom's countries share?", [("Dutch", 2)]),
                    ("Into how many regions is Aruba divided for census purposes?", ["eight", "eight regions"]),
                    ("What is the capital of Aruba?", ["Oranjestad"]),
                ],
            },
            {
                "sentences": (8, 14),
                "starts_with": "Unlike much of the Caribbean region",
                "qas": [
                    ("What kind of climate does Aruba have?", ["a dry climate", "dry"]),
                    ("What is Aruba's land area?", ["179 km2"]),
                    ("How many inhabitants did Aruba have at the 2010 Census?", ["102,484"]),
                    ("Who are thought to have been Aruba's first inhabitants?",
                     ["Caquetío Amerindians", "Caquetío Amerindians from the Arawak tribe"]),
                    ("From where did Aruba's first inhabitants migrate?", ["Venezuela"]),
                    ("Whose attacks did the first inhabitants escape?", ["the Caribs", "Caribs"]),
                    ("To when do the earliest known Indian settlements on Aruba date back?", ["1000 AD"]),
                ],
            },
        ],
    },
    {
        "title": "Aldous Huxley",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (0, 7),
                "starts_with": "Aldous Leonard Huxley (26 July 1894",
                "qas": [
                    ("When was Aldous Huxley born?", ["26 July 1894"]),
                    ("Which college did Huxley graduate from?", ["Balliol College, Oxford", "Balliol College"]),
                    ("Which of Huxley's novels is set in a dystopian London?", ["Brave New World"]),
                    ("Which Huxley book recalls experiences of taking a psychedelic drug?",
                     ["The Doors of Perception"]),
                    ("Which magazine did Huxley edit early in his career?", ["Oxford Poetry", "the magazine Oxford Poetry"]),
                    ("In which city did Huxley live from 1937 until his death?", ["Los Angeles"]),
                    ("Which body elected Huxley a Companion of Literature?",
                     ["the Royal Society of Literature", "Royal Society of Literature"]),
                ],
            },
            {
                "sentences": (10, 17),
                "starts_with": "He was nominated for the Nobel Prize",
                "qas": [
                    ("In how many different years was Huxley nominated for the Nobel Prize in Literature?",
                     ["seven", "seven different years"]),
                    ("Where was Aldous Huxley born?", ["Godalming, Surrey, England", "Godalming"]),
                    ("Who was Aldous Huxley's father?", ["Leonard Huxley", "the writer and schoolmaster Leonard Huxley"]),
                    ("Which school did Julia Arnold found?", ["Prior's Field School"]),
                    ("Which poet and critic was Julia Arnold's uncle?", ["Matthew Arnold"]),
                    ("Who was Aldous Huxley's grandfather?", ["Thomas Henry Huxley"]),
                    ("What was Thomas Henry Huxley nicknamed?", ["\"Darwin's Bulldog\"", "Darwin's Bulldog"]),
                    ("Which of Aldous's brothers committed suicide?", ["Noel Trevelyan Huxley"]),
                ],
            },
        ],
    },
    {
        "title": "Andorra",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (1, 10),
                "starts_with": "Created under a charter in A.D. 988",
                "qas": [
                    ("In what year was the present Principality of Andorra formed?", ["A.D. 1278", "1278"]),
                    ("Who is Andorra's Co-Prince besides the Bishop of Urgell?",
                     ["the President of France", "President of France"]),
                    ("What is the capital of Andorra?", ["Andorra la Vella"]),
                    ("At what elevation does Andorra's capital lie?", ["1,023 metres", "1,023 metres (3,356 ft)"]),
                    ("What is the official language of Andorra?", ["Catalan"]),
                    ("How many visitors does Andorra's tourism serve each year?",
                     ["an estimated 10.2 million", "10.2 million"]),
                    ("What is the official currency of Andorra?", ["the euro", "euro"]),
                    ("Since what year has Andorra been a member of the United Nations?", ["1993", "since 1993"]),
                    ("What was the life expectancy in Andorra in 2013?", ["81 years"]),
                ],
            },
        ],
    },
    {
        "title": "Albert Sidney Johnston",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (0, 6),
                "starts_with": "Albert Sidney Johnston (February 2, 1803",
                "qas": [
                    ("In how many different armies did Johnston serve as a general?",
                     ["three", "three different armies"]),
                    ("When did Albert Sidney Johnston die?", ["April 6, 1862"]),
                    ("Who considered Johnston the finest general officer in the Confederacy?",
                     ["Jefferson Davis", "Confederate President Jefferson Davis"]),
                    ("Before the emergence of which general was Johnston considered the Confederacy's finest?",
                     ["Robert E. Lee"]),
                    ("In which battle was Johnston killed?", ["the Battle of Shiloh", "Battle of Shiloh", "Shiloh"]),
                    ("Which Confederate general was Johnston unrelated to?", ["Joseph E. Johnston"]),
                ],
            },
            {
                "sentences": (6, 12),
                "starts_with": "Johnston was born in Washington, Kentucky",
                "qas": [
                    ("Where was Albert Sidney Johnston born?", ["Washington, Kentucky"]),
                    ("Where was Johnston's father a native of?", ["Salisbury, Connecticut"]),
                    ("Which state did Johnston consider his home?", ["Texas"]),
                    ("Where was Johnston first educated?",
                     ["Transylvania University", "Transylvania University in Lexington"]),
                    ("In what year did Johnston graduate from West Point?", ["1826", "In 1826"]),
                    ("Where in his class of 41 cadets did Johnston graduate?", ["eighth", "eighth of 41 cadets"]),
                ],
            },
        ],
    },
    {
        "title": "International Atomic Time",
        "split": "dev",
        "paragraphs": [
            {
                "sentences": (5, 10),
                "starts_with": "TAI in this form was synchronised",
                "qas": [
                    ("When was TAI synchronised with Universal Time?",
                     ["the beginning of 1958", "1958", "at the beginning of 1958"]),
                    ("Why have TAI and Universal Time drifted apart?",
                     ["due to the changing motion of the Earth", "the changing motion of the Earth"]),
                    ("How many atomic clocks does TAI average?", ["over 400", "over 400 atomic clocks"]),
                    ("In how many national laboratories are the clocks kept?",
                     ["over 50", "over 50 national laboratories"]),
                    ("What signals are used to compare the clocks?", ["GPS signals", "GPS"]),
                    ("What kind of clocks are the majority of the clocks?", ["caesium clocks", ("caesium", 0)]),
                ],
            },
        ],
    },
]


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


class BuildError(ValueError):
    """The hand-written spec does not fit the corpus text."""


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def find_occurrences(context: str, text: str) -> list[int]:
    """Start offsets of ``text`` in ``context`` that are not glued to a longer word on either side."""
    if not text:
        return []
    left = r"(?<!\w)" if text[0].isalnum() else ""
    right = r"(?!\w)" if text[-1].isalnum() else ""
    return [m.start() for m in re.finditer(left + re.escape(text) + right, context)]


def locate(context: str, answer: Answer, where: str) -> dict:
    text, index = (answer, None) if isinstance(answer, str) else answer
    starts = find_occurrences(context, text)
    if not starts:
        raise BuildError(f"{where}: answer {text!r} not found in the context")
    if index is None:
        if len(starts) > 1:
            raise BuildError(f"{where}: answer {text!r} occurs {len(starts)} times; give (text, index)")
        index = 0
    if not 0 <= index < len(starts):
        raise BuildError(f"{where}: answer {text!r} has {len(starts)} occurrence(s), index {index} asked")
    start = starts[index]
    assert context[start:start + len(text)] == text
    return {"text": text, "answer_start": start}


def build(documents) -> dict[str, dict]:
    """``{"train": squad_json, "dev": squad_json}`` from the spec and the loaded corpus documents."""
    by_title = {d.title: d for d in documents}
    out = {"train": [], "dev": []}
    seen_ids: set[str] = set()
    errors: list[str] = []
    for article in ARTICLES:
        title, split = article["title"], article["split"]
        if title not in by_title:
            raise BuildError(f"article {title!r} is not in the corpus")
        if split not in out:
            raise BuildError(f"{title}: unknown split {split!r}")
        sentences = by_title[title].sentences
        slug = slugify(title)
        paragraphs = []
        n = 0
        for p, para in enumerate(article["paragraphs"]):
            first, end = para["sentences"]
            if not 0 <= first < end <= len(sentences):
                raise BuildError(f"{title} paragraph {p}: sentence range {first}:{end} out of bounds")
            context = " ".join(sentences[first:end])
            if not context.startswith(para["starts_with"]):
                raise BuildError(f"{title} paragraph {p}: context starts {context[:60]!r}, "
                                 f"expected {para['starts_with']!r}")
            words = len(context.split())
            if not MIN_CONTEXT_WORDS <= words <= MAX_CONTEXT_WORDS:
                errors.append(f"{title} paragraph {p}: {words} words")
            qas = []
            for question, answers in para["qas"]:
                n += 1
                qid = f"wikiqa-{slug}-{n}"
                where = f"{qid} ({question})"
                if split == "train":
                    if isinstance(answers, list):
                        raise BuildError(f"{where}: train questions take exactly one answer")
                    answers = [answers]
                elif not isinstance(answers, list) or not 1 <= len(answers) <= 3:
                    raise BuildError(f"{where}: dev questions take a list of 1 to 3 answers")
                try:
                    located = [locate(context, a, where) for a in answers]
                except BuildError as exc:
                    errors.append(str(exc))
                    continue
                if len({(a["text"], a["answer_start"]) for a in located}) != len(located):
                    raise BuildError(f"{where}: duplicate reference answers")
                if qid in seen_ids:
                    raise BuildError(f"duplicate id {qid}")
                seen_ids.add(qid)
                qas.append({"id": qid, "question": question, "answers": located})
            paragraphs.append({"context": context, "qas": qas})
        out[split].append({"title": title, "paragraphs": paragraphs})
    if errors:
        raise BuildError("\n".join(errors))
    train_titles = {a["title"] for a in out["train"]}
    dev_titles = {a["title"] for a in out["dev"]}
    if train_titles & dev_titles:
        raise BuildError(f"articles in both splits: {sorted(train_titles & dev_titles)}")
    return {split: {"version": "1.1", "data": data} for split, data in out.items()}


def dumps(dataset: dict) -> str:
    return json.dumps(dataset, ensure_ascii=False, indent=1) + "\n"


def count(dataset: dict) -> tuple[int, int, int]:
    """(articles, paragraphs, questions)."""
    data = dataset["data"]
    paragraphs = [p for a in data for p in a["paragraphs"]]
    return len(data), len(paragraphs), sum(len(p["qas"]) for p in paragraphs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)

    root = HERE.parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from groupbert.data.corpus import load_wikipedia_sample

    try:
        datasets = build(load_wikipedia_sample())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    for split, path in (("train", TRAIN_FILE), ("dev", DEV_FILE)):
        text = dumps(datasets[split])
        articles, paragraphs, questions = count(datasets[split])
        summary = f"{split}: {articles} articles, {paragraphs} paragraphs, {questions} questions"
        if args.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{summary} -> {path.name} {'up to date' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{summary} -> {path.name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
