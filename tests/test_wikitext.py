"""Wikitext becomes reader-visible prose plus structured infobox facts."""

from __future__ import annotations

from loretune.ingest.wikitext import parse_page

PAGE = """{{Infobox character
|Name = Kiba Inuzuka <!-- the dog boy -->
|image=kiba_inuzuka.png
|clan={{Translation|Inuzuka|Dog's den}}
|affiliation=[[Konohagakure]]~[[Team Kurenai|Team 8]]<ref>Later a chūnin.</ref>~
|rank=Genin<ref name="r">Part I.</ref>
|partner=[[Akamaru]] {{Clear}}
|empty=
}}
'''Kiba Inuzuka''' is a ''shinobi'' of [[Konohagakure]] and a member of [[Team Kurenai|Team 8]].<ref>Databook.</ref> {{Citation needed}}
<!-- hidden editor note -->
[[File:Kiba and Akamaru.png|thumb|Kiba with [[Akamaru]]]]

== Abilities ==
He fights beside his dog [[Akamaru]].

{| class="wikitable"
! Technique !! Rank
|-
| Fang over Fang || A
|}
[[Image:Fang_over_Fang.png]]
[[Category:Characters]]
[[Category:Inuzuka_clan|Kiba]]
[[:Category:Clans|all the clans]]
"""


def test_prose_keeps_what_a_reader_sees_and_nothing_else():
    prose = parse_page(PAGE).prose
    assert prose == (
        "Kiba Inuzuka is a shinobi of Konohagakure and a member of Team 8.\n\n"
        "He fights beside his dog Akamaru.\n\n"
        "all the clans"
    )


def test_prose_drops_refs_comments_templates_tables_and_file_links():
    prose = parse_page(PAGE).prose
    for gone in ("Databook", "hidden", "Citation", "Fang over Fang", "thumb", "Kiba with", "Abilities", "Category", "'''"):
        assert gone not in prose


def test_infobox_values_are_cleaned_split_and_keyed_in_lower_case():
    page = parse_page(PAGE)
    assert page.infobox_type == "character"
    assert page.infobox == {
        "name": "Kiba Inuzuka",
        "image": "Kiba inuzuka.png",
        "affiliation": ["Konohagakure", "Team 8"],
        "rank": "Genin",
        "partner": "Akamaru",
    }  # clan was only a {{Translation}} template, empty was empty: both dropped


def test_infobox_lists_in_every_form_wikis_write_them_stay_apart():
    page = parse_page("""{{Infobox character
|affiliation=[[Konohagakure]]<br />[[Akatsuki]]<br/>[[Anbu]],<br>
|teams=
* [[Team Minato]]
* [[Team Kakashi|Team 7]]
|family={{ubl|[[Sakumo Hatake]] (father)|[[Pakkun]]}}
|titles={{Plainlist|
* Copy Ninja
* Sixth Hokage}}
|rank=Jōnin
}}""")
    assert page.infobox == {
        "affiliation": ["Konohagakure", "Akatsuki", "Anbu"],
        "teams": ["Team Minato", "Team 7"],
        "family": ["Sakumo Hatake (father)", "Pakkun"],
        "titles": ["Copy Ninja", "Sixth Hokage"],
        "rank": "Jōnin",
    }


def test_files_put_the_infobox_image_first_and_appear_once():
    page = parse_page(PAGE + "[[File:kiba_inuzuka.png|left]]\n<gallery>\nFile:Akamaru.png|Akamaru\n</gallery>")
    assert page.files == ["Kiba inuzuka.png", "Kiba and Akamaru.png", "Fang over Fang.png", "Akamaru.png"]


def test_categories_come_from_category_links_not_colon_links():
    assert parse_page(PAGE).categories == ["Characters", "Inuzuka clan"]


def test_infobox_image_written_as_a_file_link():
    page = parse_page("{{Infobox jutsu\n|image=[[File:Rasengan.png|200px]]\n|users=[[Naruto Uzumaki]]\n}}\nText.")
    assert page.infobox_type == "jutsu"
    assert page.files == ["Rasengan.png"] and page.infobox["image"] == "Rasengan.png"


def test_redirect_and_disambiguation():
    redirect = parse_page("#REDIRECT [[naruto_Uzumaki#Background]]\n\n[[Category:Characters]]")
    assert redirect.redirect == "Naruto Uzumaki" and redirect.prose == ""
    assert redirect.categories == ["Characters"]
    disambiguation = parse_page("'''Hyuga''' may refer to:\n* [[Hinata Hyuga]]\n* [[Neji Hyuga]]\n{{disambiguation}}")
    assert disambiguation.is_disambiguation and disambiguation.redirect is None
    assert disambiguation.prose == "Hyuga may refer to:\nHinata Hyuga\nNeji Hyuga"
    assert not parse_page(PAGE).is_disambiguation


def test_whitespace_entities_and_external_links():
    prose = parse_page("A&nbsp;B   C ([http://x.org/ref]) and [http://y.org the site].\n\n\n\nNext  line\t here.").prose
    assert prose == "A B C and the site.\n\nNext line here."
