"""Parsers on literal lines in the formats of the real release."""

import pytest

from components import iemocap


def test_label_header_from_the_release():
    block = iemocap.parse_label_header(
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    assert block == iemocap.LabelBlock("Ses01F_impro01_F000", 6.2901, 8.2357, "neu",
                                       2.5, 2.5, 2.5)


def test_label_header_tolerates_spacing_and_crlf():
    block = iemocap.parse_label_header(
        "[ 101.5100 -  105.3300 ]  Ses05M_script02_2_F014  xxx  [3.0000,2.5000 , 4.0000]\r\n")
    assert (block.utt_id, block.code, block.start, block.dominance) == (
        "Ses05M_script02_2_F014", "xxx", 101.51, 4.0)


@pytest.mark.parametrize("line", [
    "C-E2:\tNeutral;\t()",
    "A-E3:\tval 3; act 2; dom  2;\t()",
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu",          # VAD missing
    "[6.2901 8.2357]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]",  # no dash
])
def test_non_header_lines_are_rejected(line):
    with pytest.raises(iemocap.FormatError):
        iemocap.parse_label_header(line)


def test_annotator_lines_are_recognised():
    assert iemocap.ANNOTATOR_LINE_RE.match("C-E2:\tNeutral;\t()")
    assert iemocap.ANNOTATOR_LINE_RE.match("C-F1:\tOther; Frustration;\t(annoyed)")
    assert iemocap.ANNOTATOR_LINE_RE.match("A-M1:\tval 3; act 2; dom  2;\t()")
    assert not iemocap.ANNOTATOR_LINE_RE.match("[6.2901 - 8.2357]\tSes01F_impro01_F000")


def test_transcript_line_keeps_colons_in_the_text():
    line = iemocap.parse_transcript_line(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Look: I said it twice: no.")
    assert line == iemocap.TranscriptLine("Ses01F_impro01_F000", 6.2901, 8.2357,
                                          "Look: I said it twice: no.")


def test_transcript_non_utterance_lines():
    assert iemocap.SPEAKER_ONLY_LINE_RE.match("M: [LAUGHTER]")
    xx = iemocap.parse_transcript_line("Ses01F_script01_1_MXX0 [012.3400-013.1000]: Mm.")
    assert iemocap.UNLABELLED_TURN_RE.match(xx.utt_id)
    with pytest.raises(iemocap.FormatError):
        iemocap.parse_transcript_line("M: [LAUGHTER]")


@pytest.mark.parametrize("utt_id, session, dialog, speaker, gender, scripted", [
    ("Ses01F_impro01_F000", 1, "Ses01F_impro01", "Ses01F", "F", False),
    ("Ses01F_impro01_M013", 1, "Ses01F_impro01", "Ses01M", "M", False),
    ("Ses01M_script01_1_M003", 1, "Ses01M_script01_1", "Ses01M", "M", True),
    ("Ses03M_impro05a_F012", 3, "Ses03M_impro05a", "Ses03F", "F", False),
    ("Ses05F_script02_2_F044", 5, "Ses05F_script02_2", "Ses05F", "F", True),
])
def test_utterance_ids(utt_id, session, dialog, speaker, gender, scripted):
    uid = iemocap.parse_utt_id(utt_id)
    assert (uid.session, uid.dialog, uid.speaker, uid.gender, uid.scripted) == (
        session, dialog, speaker, gender, scripted)


@pytest.mark.parametrize("bad", ["Ses06F_impro01_F000", "Ses01F_impro01_X000",
                                 "Ses01F_impro01_FXX0", "Ses01F_dance01_F000", "hello"])
def test_bad_utterance_ids(bad):
    with pytest.raises(iemocap.FormatError):
        iemocap.parse_utt_id(bad)


def test_formatters_round_trip_through_the_parsers():
    block = iemocap.LabelBlock("Ses02M_script03_2_F007", 12.3456, 15.0001, "exc",
                               3.5, 4.0, 2.5)
    assert iemocap.parse_label_header(iemocap.format_label_header(block)) == block
    line = iemocap.format_transcript_line("Ses02M_script03_2_F007", 12.3456, 15.0001, "Hi: you")
    assert line.startswith("Ses02M_script03_2_F007 [012.3456-015.0001]: ")
    assert iemocap.parse_transcript_line(line).text == "Hi: you"


def test_wdseg_words_and_frames():
    # As the release writes them: silences, sentence marks, noise tokens and pronunciation
    # variants ("THE(2)") beside the words.
    text = (" SFrm  EFrm    SegAScr Word\n"
            "    0    33     -52714 <s>\n"
            "   34    51     -98765 I'M(2)\n"
            "   52    60     -11111 <sil>\n"
            "   61    80     -22222 ++LAUGHTER++\n"
            "   81    99     -33333 THE(2)\n"
            "  100   140     -44444 OFFICE\n"
            "  141   170     -55555 </s>\n"
            " Total score:      -318144\n"
            " End of Utterance Reached\n")
    assert iemocap.parse_wdseg(text) == [(34, 51, "i'm"), (81, 99, "the"), (100, 140, "office")]
    written = iemocap.format_wdseg([(0, 9, "<s>"), (10, 30, "HELLO"), (31, 40, "</s>")], 1)
    assert iemocap.parse_wdseg(written) == [(10, 30, "hello")]


def test_latin1_files_are_read(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("Ses01F_impro01_F000 [001.0000-002.0000]: Caf\xe9 ol\xe9.".encode("latin-1"))
    text, encoding = iemocap.read_text(path)
    assert encoding == "latin-1" and "Café olé." in text


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n")
    text, encoding = iemocap.read_text(path)
    assert encoding == "utf-8" and text.startswith("% [START_TIME")


def test_find_release_root(tmp_path):
    (tmp_path / "IEMOCAP_full_release" / "Session3").mkdir(parents=True)
    assert iemocap.find_release_root(tmp_path) == tmp_path / "IEMOCAP_full_release"
    assert iemocap.find_release_root(tmp_path / "IEMOCAP_full_release") == (
        tmp_path / "IEMOCAP_full_release")
    with pytest.raises(iemocap.FormatError, match="not an IEMOCAP release"):
        iemocap.find_release_root(tmp_path / "IEMOCAP_full_release" / "Session3")
    with pytest.raises(FileNotFoundError):
        iemocap.find_release_root(tmp_path / "nowhere")
