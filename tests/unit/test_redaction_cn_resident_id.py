"""cn_resident_id: MOD 11-2 check digit (incl. X), real birth date, province code, CJK context."""

from stdnum.cn import ric

from services.router.redaction import create
from services.router.redaction.checksummed import is_valid_cn_resident_id


def make_id(body17: str) -> str:
    return body17 + ric.calc_check_digit(body17 + "0")


VALID = make_id("11010119900307123")
# A body whose check character is X.
X_ID = next(
    make_id(f"4403051985061{n:04d}") for n in range(10000) if make_id(f"4403051985061{n:04d}").endswith("X")
)


def find(text: str) -> list[tuple[str, str]]:
    return [(s.value, s.canonical) for s in create("cn_resident_id").find(text)]


def test_valid_id_inside_chinese_text() -> None:
    assert find(f"身份证号{VALID}请核实") == [(VALID, VALID)]
    assert find(f"ID: {VALID}.") == [(VALID, VALID)]


def test_check_character_x_upper_and_lower() -> None:
    assert find(f"证件{X_ID}。") == [(X_ID, X_ID)]
    lower = X_ID[:-1] + "x"
    assert find(f"证件{lower}。") == [(lower, X_ID)]  # canonical is upper-case


def test_wrong_check_digit_is_not_flagged() -> None:
    for c in "0123456789X":
        if c != VALID[-1]:
            assert find(f"身份证{VALID[:-1]}{c}号") == []


def test_impossible_or_future_birth_date_is_not_flagged() -> None:
    for date in ("19901332", "19900230", "20990101", "18991231"):
        assert not is_valid_cn_resident_id(make_id("110101" + date + "123"))


def test_unknown_province_is_not_flagged() -> None:
    assert not is_valid_cn_resident_id(make_id("99010119900307123"))
    # Issued in a district created after the birth year: still valid (stdnum would reject).
    assert is_valid_cn_resident_id(make_id("44030519790120404"))


def test_not_part_of_a_longer_ascii_run() -> None:
    assert find(f"{VALID}1") == []
    assert find(f"A{VALID}") == []
    assert find(f"{VALID[:-1]}") == []  # 17 characters
