"""The XLM-R language list and the default language weighting of the synthetic data.

XLM-R's CC-100 covers 100 "languages"; seven of them are script variants (romanised
Bengali/Hindi/Tamil/Telugu/Urdu, Zawgyi Burmese, traditional Chinese). Dropping those
leaves the 93 languages the E5-mistral data spans. Prompts name languages in English, so
placeholder values are the English names below; codes are kept for users and reports.

Default weights follow the published statistics of the E5 data: English
43%, 13 high-resource languages 3% each (39%), and the remaining 79 languages share the
rest (18%, ~0.23% each; the paper's "~20%" is rounded, and 43+39+20 would exceed 100).
"""

from __future__ import annotations

from collections.abc import Mapping

# ISO 639-1 code -> English name, in XLM-R's (alphabetical by code) order.
XLMR_LANGUAGES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "br": "Breton", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "fy": "Western Frisian",
    "ga": "Irish", "gd": "Scottish Gaelic", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin", "lo": "Lao", "lt": "Lithuanian",
    "lv": "Latvian", "mg": "Malagasy", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian",
    "mr": "Marathi", "ms": "Malay", "my": "Burmese", "ne": "Nepali", "nl": "Dutch",
    "no": "Norwegian", "om": "Oromo", "or": "Odia", "pa": "Punjabi", "pl": "Polish",
    "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sa": "Sanskrit",
    "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "so": "Somali",
    "sq": "Albanian", "sr": "Serbian", "su": "Sundanese", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish",
    "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "xh": "Xhosa", "yi": "Yiddish", "zh": "Chinese",
}  # fmt: skip

HIGH_RESOURCE: tuple[str, ...] = (
    "pl", "ja", "it", "ru", "id", "de", "fa", "es", "zh", "fr", "pt", "nl", "ar",
)  # fmt: skip

NAME_TO_CODE: dict[str, str] = {name: code for code, name in XLMR_LANGUAGES.items()}


def default_language_weights(
    english: float = 0.43, high_resource_each: float = 0.03, rest_total: float = 0.18
) -> dict[str, float]:
    """English name -> weight with the published shape (weights sum to 1 by default)."""
    rest = [c for c in XLMR_LANGUAGES if c != "en" and c not in HIGH_RESOURCE]
    weights = {XLMR_LANGUAGES["en"]: english}
    weights.update({XLMR_LANGUAGES[c]: high_resource_each for c in HIGH_RESOURCE})
    weights.update({XLMR_LANGUAGES[c]: rest_total / len(rest) for c in rest})
    return weights


def resolve_language_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Accept codes or English names as keys; return English name -> weight.

    Unknown languages are allowed (users may target languages outside XLM-R), but a key
    that looks like a code and is not one is almost always a typo, so that is an error.
    """
    out: dict[str, float] = {}
    for key, w in weights.items():
        name = XLMR_LANGUAGES.get(key, key)
        if name == key and len(key) <= 3 and key.islower() and key not in NAME_TO_CODE:
            raise ValueError(f"unknown language code {key!r} in language weights (use an XLM-R code or a full name)")
        out[name] = out.get(name, 0.0) + float(w)
    return out
