"""Human words for the machine vocabulary (statuses, crowding levels, GTFS-RT causes and effects), zh and en.

Templates get these as ready strings; payloads carry the codes and, where a display needs them, the words.
A language we have no word for falls back to English, then to the code itself.
"""

from __future__ import annotations

from collections.abc import Mapping

_WORDS: Mapping[str, Mapping[str, str]] = {
    # line status
    "normal": {"zh": "运营正常", "en": "Good service"},
    "changes": {"zh": "运营调整", "en": "Service changes"},
    "delayed": {"zh": "列车延误", "en": "Delays"},
    "partly_suspended": {"zh": "部分区段停运", "en": "Part suspended"},
    "suspended": {"zh": "全线停运", "en": "Suspended"},
    # crowding (GTFS-RT OccupancyStatus)
    "EMPTY": {"zh": "空闲", "en": "Empty"},
    "MANY_SEATS_AVAILABLE": {"zh": "舒适", "en": "Many seats"},
    "FEW_SEATS_AVAILABLE": {"zh": "较舒适", "en": "Few seats"},
    "STANDING_ROOM_ONLY": {"zh": "较拥挤", "en": "Standing room only"},
    "CRUSHED_STANDING_ROOM_ONLY": {"zh": "拥挤", "en": "Very crowded"},
    "FULL": {"zh": "非常拥挤", "en": "Full"},
    "NOT_ACCEPTING_PASSENGERS": {"zh": "限流", "en": "Entry restricted"},
    "NO_DATA_AVAILABLE": {"zh": "暂无数据", "en": "No data"},
    "NOT_BOARDABLE": {"zh": "不可乘车", "en": "Not boardable"},
    # effects
    "NO_SERVICE": {"zh": "停运", "en": "No service"},
    "REDUCED_SERVICE": {"zh": "班次减少", "en": "Reduced service"},
    "SIGNIFICANT_DELAYS": {"zh": "严重延误", "en": "Significant delays"},
    "DETOUR": {"zh": "绕行", "en": "Detour"},
    "ADDITIONAL_SERVICE": {"zh": "加开列车", "en": "Additional service"},
    "MODIFIED_SERVICE": {"zh": "运营调整", "en": "Modified service"},
    "STOP_MOVED": {"zh": "站点调整", "en": "Stop moved"},
    "ACCESSIBILITY_ISSUE": {"zh": "无障碍设施故障", "en": "Accessibility issue"},
    "OTHER_EFFECT": {"zh": "其他影响", "en": "Other effect"},
    "UNKNOWN_EFFECT": {"zh": "影响未知", "en": "Unknown effect"},
    "NO_EFFECT": {"zh": "无影响", "en": "No effect"},
    # causes
    "TECHNICAL_PROBLEM": {"zh": "设备故障", "en": "technical problem"},
    "STRIKE": {"zh": "罢工", "en": "strike"},
    "DEMONSTRATION": {"zh": "游行活动", "en": "demonstration"},
    "ACCIDENT": {"zh": "事故", "en": "accident"},
    "HOLIDAY": {"zh": "节假日", "en": "holiday"},
    "WEATHER": {"zh": "天气原因", "en": "weather"},
    "MAINTENANCE": {"zh": "设施维护", "en": "maintenance"},
    "CONSTRUCTION": {"zh": "施工", "en": "construction"},
    "POLICE_ACTIVITY": {"zh": "警方处置", "en": "police activity"},
    "MEDICAL_EMERGENCY": {"zh": "乘客急病", "en": "medical emergency"},
    "OTHER_CAUSE": {"zh": "其他原因", "en": "other cause"},
    "UNKNOWN_CAUSE": {"zh": "原因待查", "en": "unknown cause"},
    # severity
    "UNKNOWN_SEVERITY": {"zh": "", "en": ""},
    "INFO": {"zh": "提示", "en": "Info"},
    "WARNING": {"zh": "注意", "en": "Warning"},
    "SEVERE": {"zh": "紧急", "en": "Severe"},
    # trends
    "rising": {"zh": "上升", "en": "rising"},
    "falling": {"zh": "下降", "en": "falling"},
    "steady": {"zh": "平稳", "en": "steady"},
}


def word(code: str, language: str) -> str:
    """The word for a vocabulary code in a language (English, then the code, as fallbacks)."""
    entry = _WORDS.get(code)
    if entry is None:
        return code
    return entry.get(language, entry.get("en", code))
