"""One exception tree for the modem driver, rooted at `GsmError`.

Every error says whether trying again later can help (`retryable`): the outbox retries
those and gives up at once on the others. Error codes and their meanings are from
3GPP TS 27.007 section 9.2 (+CME ERROR) and TS 27.005 section 3.2.5 (+CMS ERROR, whose
0..127 are the RP-cause values of TS 24.011 annex E-2).
"""

from __future__ import annotations

import enum

# TS 27.007 9.2.1 (general) and 9.2.2 (GPRS-related) +CME ERROR codes we name.
CME_MEANINGS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone-adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    6: "PH-FSIM PIN required",
    7: "PH-FSIM PUK required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalisation PIN required",
    100: "unknown",
    # Vendor code, not in 27.007: Wavecom and others answer it while recovering from CFUN.
    515: "device busy (vendor)",
}

# Retryable: the modem, SIM or network is busy or briefly away.
CME_RETRYABLE = frozenset({0, 1, 2, 14, 20, 23, 30, 31, 100, 515})

# TS 27.005 3.2.5 +CMS ERROR codes (0..127: TS 24.011 E-2 RP-cause).
CMS_MEANINGS: dict[int, str] = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    21: "short message transfer rejected",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable, unspecified",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    81: "invalid short message transfer reference value",
    95: "invalid message, unspecified",
    96: "invalid mandatory information",
    97: "message type non-existent or not implemented",
    98: "message not compatible with short message protocol state",
    99: "information element non-existent or not implemented",
    111: "protocol error, unspecified",
    127: "interworking, unspecified",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    312: "PH-SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    316: "SIM PUK required",
    317: "SIM PIN2 required",
    318: "SIM PUK2 required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

# Retryable: network trouble, congestion, busy SIM, the catch-all 500 (modems use it for
# transient radio failures too; Gammu notes some modems report an error for a message
# they did queue, which is why the outbox, not the driver, decides when to stop).
CMS_RETRYABLE = frozenset({27, 38, 41, 42, 47, 111, 127, 300, 314, 320, 331, 332, 500})


# After the message body went out, a +CMS ERROR says "not sent" only for these codes.
# 27.005 3.2.5 codes 300..500 are the ME's own; 0..127 are RP-causes (TS 24.011 8.2.5.4,
# annex E-2): the network answered the submission with RP-ERROR, so the service centre
# did not take the message (TS 24.011 7.3.4: RP-ERROR is the relay's "failed" answer).
# Left out on purpose, so they stay unclear: 300 "ME failure" (the module failed at an
# unknown step), 332 "network timeout" (no RP-ACK came: the network may have taken it
# and the acknowledgement was lost), 500 "unknown error" (the vendors' catch-all; Gammu's
# smsd/core.c notes modems that report an error for a message they did queue), 340 and
# every vendor code (512 and up): nothing says where they happened.
CMS_NOT_SENT = frozenset(range(1, 128)) | frozenset(
    {
        301,  # SMS service of ME reserved
        302,  # operation not allowed
        303,  # operation not supported
        304,  # invalid PDU mode parameter
        305,  # invalid text mode parameter
        *range(310, 319),  # SIM not inserted, PIN/PUK needed, SIM failure, busy, wrong
        320,  # memory failure
        321,  # invalid memory index
        322,  # memory full
        330,  # SMSC address unknown
        331,  # no network service
    }
)


class Submission(enum.StrEnum):
    """What a failed send did, for failover (`submission_of`).

    NOT_SENT: known that nothing of the text reached the network (the modem refused it
    before or instead of transmitting): another modem may send it. PARTIAL: some parts of
    a long text went out (their references are known), the rest surely not: sending it
    elsewhere would repeat those parts; resending to the same Modem resumes after them.
    UNCLEAR: a body went to the modem and no clear answer came: it may have been sent;
    never resent blindly (the outbox records it as uncertain)."""

    NOT_SENT = "not_sent"
    PARTIAL = "partial"
    UNCLEAR = "unclear"


class GsmError(Exception):
    """Root of every modem driver error. `retryable`: may a later attempt succeed?

    `before_submission`: the error is known to have come before anything of the message
    was handed to the network (see `submission_of`). `parts_sent`: parts of a long text
    confirmed (+CMGS) before this error, set by `Modem.send_sms`."""

    retryable: bool = False
    before_submission: bool = True
    parts_sent: int = 0


class ProtocolError(GsmError):
    """The modem answered something we cannot read (a malformed or unexpected reply)."""

    retryable = True


class CommandError(GsmError):
    """A command ended in plain ERROR (or a vendor equivalent such as COMMAND NOT SUPPORT)."""

    retryable = False

    def __init__(self, command: str, message: str = "ERROR") -> None:
        self.command = command
        super().__init__(f"{command}: {message}")


class CmeError(CommandError):
    """+CME ERROR: <code> (TS 27.007 9.2): equipment, SIM or network failure."""

    def __init__(self, command: str, code: int, text: str = "") -> None:
        self.code = code
        self.meaning = CME_MEANINGS.get(code, text or "unknown CME error")
        self.retryable = code in CME_RETRYABLE
        super().__init__(command, f"+CME ERROR: {code} ({self.meaning})")


class CmsError(CommandError):
    """+CMS ERROR: <code> (TS 27.005 3.2.5): a message service failure.

    `after_body`: it answered a message body (set by the driver), so it says "not sent"
    only for the codes of `CMS_NOT_SENT`; before the body (the answer to the AT+CMGS line
    itself) nothing was transmitted whatever the code."""

    def __init__(self, command: str, code: int, text: str = "") -> None:
        self.code = code
        self.meaning = CMS_MEANINGS.get(code, text or "unknown CMS error")
        self.retryable = code in CMS_RETRYABLE
        self.after_body = False
        super().__init__(command, f"+CMS ERROR: {code} ({self.meaning})")

    @property
    def before_submission(self) -> bool:  # type: ignore[override]
        """Known not sent: before the body, or a code of `CMS_NOT_SENT` after it."""
        return not self.after_body or self.code in CMS_NOT_SENT


class AtTimeout(GsmError, TimeoutError):
    """The modem did not finish a command in time; `command` names it."""

    retryable = True

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        super().__init__(f"{command}: no answer within {timeout:g} s")


class SendUncertain(AtTimeout):
    """The message body went to the modem but +CMGS never came: it may have been sent.

    Not retryable: resending could text the caller twice; the outbox records it as
    uncertain.
    """

    retryable = False
    before_submission = False


class LostAfterBody(SendUncertain):
    """The device went away after the message body was written, before +CMGS came."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(command, 0.0)
        self.args = (f"{command}: the modem went away after taking the message ({reason})",)


class UnclearAfterBody(SendUncertain):
    """The message body was written, and the answer to it could not be read."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(command, 0.0)
        self.args = (f"{command}: no clear answer after the message ({reason})",)


class ModemGone(GsmError):
    """The serial device went away (unplugged, closed) or is not open; retry later."""

    retryable = True


class NoDevice(GsmError):
    """The serial device path does not exist."""

    retryable = False

    def __init__(self, device: str) -> None:
        self.device = device
        super().__init__(f"no such device: {device}")


class DevicePermission(GsmError):
    """The serial device exists but we may not open it (not in the dialout group)."""

    retryable = False

    def __init__(self, device: str) -> None:
        self.device = device
        super().__init__(
            f"permission denied on {device}: add the user to the dialout group"
            " (sudo usermod -aG dialout $USER, then log in again)"
        )


class NotASerialPort(GsmError):
    """The device path exists but is not a serial port (a typo, a file, /dev/null)."""

    retryable = False

    def __init__(self, device: str) -> None:
        self.device = device
        super().__init__(f"{device} is not a serial port")


class NotRegistered(GsmError):
    """The modem is not registered on a network (no coverage, no service, denied)."""

    retryable = True


class SimError(GsmError):
    """The SIM is missing, broken or locked by PUK: a person must act."""

    retryable = False


class PinError(SimError):
    """SIM PIN needed but missing, or wrong. Never retried: three wrong PINs lock the SIM."""

    retryable = False


class UnsupportedText(GsmError):
    """The text cannot be sent in the mode the modem works in (text-mode fallback)."""

    retryable = False


class ImeiNotFound(GsmError):
    """No candidate serial port answered with the IMEI a device "imei:<IMEI>" names
    (not plugged in, still re-enumerating after a reset, or held by another program)."""

    retryable = True

    def __init__(self, imei: str, looked: int) -> None:
        self.imei = imei
        super().__init__(f"no serial port answers with IMEI {imei} ({looked} port(s) asked)")


class ImeiAmbiguous(GsmError):
    """Two different devices answer with the same IMEI: which one is meant cannot be told
    (a cloned or blank IMEI); a person must pick the device by its path."""

    retryable = False

    def __init__(self, imei: str, paths: tuple[str, ...]) -> None:
        self.imei = imei
        self.paths = paths
        super().__init__(
            f"IMEI {imei} is answered by {len(paths)} devices ({', '.join(paths)}):"
            " name the modem by its /dev/serial/by-id path instead"
        )


class ModemFailed(GsmError):
    """The recovery ladder ended: resync, reopen and AT+CFUN=1,1 resets did not bring the
    modem back. Given up until a person looks (or the process restarts)."""

    retryable = False


def submission_of(exc: BaseException) -> Submission:
    """How far a failed `Modem.send_sms` got, for failover (see `Submission`).

    NOT_SENT for an error before any body was written (ValueError, UnsupportedText,
    ModemGone or a timeout before the prompt, a +CMS ERROR to the AT+CMGS line), and for
    a +CMS ERROR to a body whose code is in `CMS_NOT_SENT`; PARTIAL when such an error
    came after earlier parts were confirmed; UNCLEAR for everything else: SendUncertain
    (the body went out, no clear answer), a +CMS ERROR that does not say where it
    happened (300, 332, 500, vendor codes), and any exception that is not ours.
    """
    if isinstance(exc, ValueError):
        return Submission.NOT_SENT  # refused before the modem (bad number, empty text)
    if not isinstance(exc, GsmError) or not exc.before_submission:
        return Submission.UNCLEAR
    return Submission.PARTIAL if exc.parts_sent else Submission.NOT_SENT
