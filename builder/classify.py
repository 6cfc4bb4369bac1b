"""Maps how a build ended (script exit code, log text) to a failure class and a summary.

The summary is what a maintainer reads first on the master's web page, so it names the
missing thing and, when we know it, the package that provides it. Logs come from
arbitrary sdist code: we read only the tail, decode leniently, cap every line and use
only patterns that run in linear time, so a hostile log cannot crash or stall a builder.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from auditwheel.architecture import Architecture
from auditwheel.error import InvalidLibcError
from auditwheel.libc import Libc
from auditwheel.policy import WheelPolicies

from builder.diagnosis_data import (
    CMAKE,
    CMAKE_PYTHON,
    CONFIG_SCRIPTS,
    HEADER_DIRS,
    HEADERS,
    LIBRARIES,
    LIBRARY_PREFIXES,
    LXML_LIBRARIES,
    PKGCONFIG,
    PYPI_NAMES,
    PYTHON_HEADER_DIRS,
    REMOVED_STDLIB,
    SETUP_NAMES,
    TOOL_HINTS,
    TOOLS,
    Packages,
)
from common.states import FailureReason

EXIT_CODES: dict[int, tuple[FailureReason, str]] = {
    10: (FailureReason.NO_INTERPRETER, "the build image has no interpreter for this tag"),
    11: (FailureReason.COMPILE_ERROR, "building the wheel failed"),
    12: (FailureReason.PURE_PYTHON, "the build produced a pure-Python wheel, not an ARM one"),
    13: (FailureReason.AUDITWHEEL_REJECTED, "auditwheel could not repair the wheel"),
    14: (FailureReason.BUILDER_ERROR, "the build environment is broken"),
    15: (FailureReason.SMOKE_TEST_FAILED, "the repaired wheel did not install or import"),
}
EXIT_NO_INTERPRETER = 10
EXIT_BUILD_FAILED = 11
EXIT_PURE_PYTHON = 12
EXIT_AUDITWHEEL = 13
EXIT_BUILDER = 14
EXIT_SIGKILL = 137  # 128 + 9: the kernel's (or Docker's) OOM killer, when not our timeout.

SCAN_BYTES = 256 * 1024
MAX_LINE = 2000  # Longer lines are cut: keeps every match bounded and summaries short.
MAX_SUMMARY = 240

# Reasons worth an automatic (capped) retry: the same build may well succeed next time.
TRANSIENT_REASONS = frozenset({FailureReason.OUT_OF_MEMORY, FailureReason.NETWORK})


@dataclass(frozen=True)
class Diagnosis:
    """One failed build, explained.

    `summary` is the one line sent to the master (it already includes `hint`); `missing`
    names the header, library, module or tool when that is the cause; `packages` are the
    (Debian, CentOS) packages that provide it, for code that installs them (see
    system_packages_for) rather than a human reading the hint.
    """

    reason: FailureReason
    summary: str
    transient: bool = False
    hint: str | None = None
    missing: str | None = None
    packages: Packages | None = None
    # A build requirement with no wheel for the target on any index the builder asks:
    # the master may build it first and let the job wait for it (dep-wait).
    needs_wheel: str | None = None


# Package managers whose names are the Debian side of a Packages pair, and the CentOS side.
_DEBIAN_MANAGERS = frozenset({"apt-get", "apt"})
_CENTOS_MANAGERS = frozenset({"yum", "dnf", "microdnf"})


def system_packages_for(diagnosis: Diagnosis, manager: str) -> list[str]:
    """The packages to install with `manager` (an image's package manager: "apt-get",
    "yum", "dnf") to fix `diagnosis`; empty when it names none or the manager is unknown.
    """
    if diagnosis.packages is None:
        return []
    debian, centos = diagnosis.packages
    if manager in _DEBIAN_MANAGERS:
        return debian.split()
    if manager in _CENTOS_MANAGERS:
        return centos.split()
    return []


def classify(
    exit_code: int, log_tail: bytes, *, timed_out: bool = False, oom_killed: bool = False
) -> tuple[FailureReason, str]:
    """The (reason, summary) pair the backends report; see diagnose()."""
    found = diagnose(exit_code, log_tail, timed_out=timed_out, oom_killed=oom_killed)
    return found.reason, found.summary


def is_transient(reason: FailureReason, text: str | bytes = "") -> bool:
    """Whether retrying the same build could help: the master queues a transient failure
    again, up to master.max_attempts, instead of waiting for a human to re-queue it.

    `text` is the summary or the log; it lets a builder problem such as a full disk or an
    emulator crash count as transient while other failures of that class do not.
    """
    if reason in TRANSIENT_REASONS:
        return True
    if isinstance(text, bytes):
        text = _prepare(text)
    if reason is FailureReason.BUILDER_ERROR:
        return _BUILDER_TRANSIENT.search(text) is not None
    if reason is FailureReason.COMPILE_ERROR:
        return _EMULATOR_CRASH.search(text) is not None
    return False


def diagnose(
    exit_code: int, log_tail: bytes, *, timed_out: bool = False, oom_killed: bool = False
) -> Diagnosis:
    """Explain a failed build from build.sh's exit code and the tail of its log.

    `timed_out` and `oom_killed` come from the backend (it killed the build at its limit,
    or Docker reported OOMKilled); they win over anything the log says.
    """
    text = _prepare(log_tail)
    note = _TIMEOUT_NOTE.search(text)
    if timed_out or note:
        limit = f" of {note.group(1)} s" if note else ""
        return _make(FailureReason.TIMEOUT, f"build exceeded the time limit{limit}")
    if offline := _OFFLINE_MISSING.search(text):
        wanted = _make(FailureReason.MISSING_DEPENDENCY, offline.group(1), missing=offline.group(2))
        if offline.group("nowheel"):
            return replace(wanted, needs_wheel=offline.group(2))
        return wanted
    if offline := _OFFLINE_NETWORK.search(text):
        # Not transient: an offline build meets the same wall on every attempt.
        return Diagnosis(FailureReason.NETWORK, _one_line(offline.group(1)), transient=False)
    if oom_killed or exit_code == EXIT_SIGKILL:
        # Not our timeout (handled above), so the container's memory limit killed it.
        return _oom(text) or _make(
            FailureReason.OUT_OF_MEMORY, "out of memory: the build was killed (SIGKILL)"
        )
    no_compiled_code = exit_code == EXIT_PURE_PYTHON or (
        exit_code == EXIT_AUDITWHEEL and _NOT_PLATFORM.search(text) is not None
    )
    if no_compiled_code and (left_out := _left_out(text)):
        return left_out
    if exit_code == EXIT_AUDITWHEEL:
        return _auditwheel(text)
    if exit_code in EXIT_CODES and exit_code != EXIT_BUILD_FAILED:
        reason, summary = EXIT_CODES[exit_code]
        if exit_code == EXIT_BUILDER and _NO_SPACE.search(text):
            summary = "the builder ran out of disk space"
        elif exit_code == EXIT_NO_INTERPRETER and (tag := _NO_INTERPRETER.search(text)):
            summary = f"the build image has no interpreter for {tag.group(1)}"
        return _make(reason, summary, text=text)
    if found := _from_log(text):
        return found
    if exit_code == EXIT_BUILD_FAILED:
        return _make(FailureReason.COMPILE_ERROR, _fallback_summary(text))
    return _make(FailureReason.BUILDER_ERROR, f"build script exited with {exit_code}")


# --- preparing the text -------------------------------------------------------------------

# CSI (colours, cursor moves) and OSC (titles, hyperlinks) sequences; every repetition is
# bounded so a stray ESC cannot make the scan quadratic.
_ANSI = re.compile(
    r"\x1b\[[0-9;:?<=>]{0,32}[ -/]{0,4}[@-~]|\x1b\][^\x07\x1b\n]{0,512}(?:\x07|\x1b\\)?"
)


def _prepare(log_tail: bytes) -> str:
    """Decode the last SCAN_BYTES, drop ANSI codes, cut lines to MAX_LINE characters."""
    text = log_tail[-SCAN_BYTES:].decode("utf-8", errors="replace")
    text = _ANSI.sub("", text)
    return "\n".join(line[:MAX_LINE] for line in text.splitlines())


def _one_line(text: str, limit: int = MAX_SUMMARY) -> str:
    """Plain printable text on one line: no control, bidi or zero-width characters."""
    flat = " ".join(text.split())
    flat = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _make(
    reason: FailureReason,
    summary: str,
    hint: str | None = None,
    missing: str | None = None,
    text: str = "",
    packages: Packages | None = None,
) -> Diagnosis:
    line = _one_line(f"{summary}: {hint}" if hint else summary)
    return Diagnosis(reason, line, is_transient(reason, text or line), hint, missing, packages)


def _needs(
    reason: FailureReason, summary: str, packages: Packages | None, missing: str
) -> Diagnosis:
    """A missing library or tool, with the packages that provide it when we know them."""
    return _make(reason, summary, _install(packages), missing, packages=packages)


def _install(packages: Packages | None) -> str | None:
    if packages is None:
        return None
    debian, centos = packages
    return f"install {debian} (Debian) / {centos} (CentOS)"


def _declare(distribution: str) -> str:
    return f"add {distribution} to build-system.requires"


# --- the patterns -------------------------------------------------------------------------
# Every pattern is anchored on a literal phrase and uses only bounded or single-class
# repetitions, so each runs in linear time over the (line-capped) text.

# The builder's own note when an offline build needs a requirement it cannot prefetch.
_OFFLINE_MISSING = re.compile(
    r"::armwheels:: offline build failed: "
    r"((\S{1,200}) (?:(?P<nowheel>has no wheel)|is still missing)[^\n]{1,300})"
)
_OFFLINE_NETWORK = re.compile(r"::armwheels:: offline build failed: (the build tried [^\n]{1,300})")
_TIMEOUT_NOTE = re.compile(r"::armwheels:: killed after the time limit of (\d{1,7}) s")
_NO_INTERPRETER = re.compile(r"::armwheels:: no interpreter for (\w{1,20})")
_NO_SPACE = re.compile(r"No space left on device")
_EMULATOR_CRASH = re.compile(
    r"qemu: uncaught target signal|internal compiler error: (?:Segmentation fault|Illegal)"
)
# In the log, or in the summaries diagnose() writes for them.
_BUILDER_TRANSIENT = re.compile(
    r"No space left on device|ran out of disk space|qemu: uncaught target signal"
)
_QEMU = re.compile(r"qemu: uncaught target signal [^\n]{1,100}")

_OOM = re.compile(
    r"Killed signal terminated program (?P<prog>[a-z][\w.+-]{0,39})"
    r"|internal compiler error: Killed \(program (?P<prog2>[\w.+-]{1,40})\)"
    r"|virtual memory exhausted"
    r"|(?P<prog3>cc1plus|cc1|lto1|f951|rustc): out of memory"
    r"|out of memory allocating \d+ bytes"
    r"|(?P<prog4>ld|collect2|lto-wrapper)(?:\.\w+)? terminated with signal 9"
    r"|^[ \t]*MemoryError\b"
    r"|memory allocation of \d+ bytes failed"
    r"|fatal runtime error: out of memory"
    r"|LLVM ERROR: out of memory"
    r"|std::bad_alloc"
    r"|\(signal: 9, SIGKILL: kill\)"
    r"|Cannot allocate memory",
    re.MULTILINE,
)

_PIP_PYTHON = re.compile(
    r"(?:Package '(?P<pkg>[^'\n]{1,100})' )?requires a different Python: "
    r"(?P<have>[\w.+]{1,30}) not in '(?P<want>[^'\n]{1,100})'"
)
_SETUP_PYTHON = re.compile(
    r"(?:RuntimeError|Exception|SystemExit|ERROR|Error): "
    r"(?P<msg>Python (?:version )?(?:>= ?)?\d\.\d{1,2}(?: or (?:later|newer|above)|\+)? "
    r"(?:is )?required[^\n]{0,80})"
)
_IGNORED_PYTHON = re.compile(
    r"Ignored the following versions that require a different python version"
)

_HEADER = re.compile(
    r":\d+(?::\d+)?: fatal error: (?:(?P<gcc>[\w./+-]{1,200}): No such file or directory"
    r"|'(?P<clang>[\w./+-]{1,200})' file not found)"
)
_LIBRARY = re.compile(
    r"(?:cannot find|library not found for|unable to find library) -l(?P<lib>:?[\w.+-]{1,100})"
)
_PKGCONFIG = re.compile(
    r"^(?P<line>[^\n]{0,40}?)(?:Package '(?P<a>[\w.+-]{1,100})', required by '[^'\n]{0,100}', "
    r"not found|Package (?P<b>[\w.+-]{1,100}) was not found in the pkg-config search path"
    r"|No package '(?P<c>[\w.+-]{1,100})' found)",
    re.MULTILINE,
)
_PKGCONFIG_REQUIRED = re.compile(r"A required package was not found|were not met")
_PKGCONFIG_OLD = re.compile(
    r"Requested '(?P<want>[^'\n]{1,100})' but version of (?P<name>[^\n]{1,80}?) is "
    r"(?P<have>[\w.+-]{1,40})"
)
_CMAKE = re.compile(
    r"^[ \t]*Could NOT find (?P<a>[\w.+-]{1,80})"
    r"|Could not find a package configuration file provided\s+by\s+\"(?P<b>[\w.+-]{1,80})\""
    r"|By not providing\s+\"Find(?P<c>[\w.+-]{1,80})\.cmake\""
    r"|Could not find directory of (?P<d>OpenSSL) installation",
    re.MULTILINE,
)
_MESON_DEP = re.compile(r"ERROR: Dependency \"?(?P<name>[\w.+-]{1,80})\"? not found")
_CONFIG_SCRIPT = re.compile(
    r"\b(?P<a>" + "|".join(re.escape(name) for name in CONFIG_SCRIPTS) + r")\b"
    r"[^\n]{0,60}?(?:not found|No such file|could not be found|not installed|command not found)"
    r"|(?:Could not find|could not run|can't find|cannot find|Unable to find|"
    r"Can not find) [^\n]{0,40}?\b(?P<b>"
    + "|".join(re.escape(name) for name in CONFIG_SCRIPTS)
    + r")\b"
)
# A setup script's own words for a library it cannot find. Pillow's sentence (and its
# older "--enable-X requested" form) is always the fatal error, so it competes with the
# compiler's errors; the generic phrases below are also printed by optional probes
# ("warning: ... building without it"), so they rank with pkg-config's messages.
_SETUP_FATAL = re.compile(
    r"The headers or library files could not be found for (?P<a>[\w.+-]{1,60})"
    r"|^[ \t]*(?:__main__\.)?RequiredDependencyException: (?P<b>[\w.+-]{1,60})[ \t]*$"
    r"|--enable-(?P<c>[\w-]{1,40}) requested but [\w.+-]{1,60} not found, aborting",
    re.MULTILINE,
)
_SETUP_LIBRARY = re.compile(
    # Only reported when the name is a library we know (not "the", not a Python module).
    r"[Cc]ould not find (?:the )?library:? ['\"`]?(?P<a>[\w.+-]{1,60})"
    r"|[Ll]ibrary ['\"`]?(?P<b>[\w.+-]{1,60})['\"`]? (?:was )?not found"
    r"|(?P<c> (?:library|libraries) (?:was |were |is )?not found)"
    r"|(?:[Uu]nable to|[Cc]annot|[Cc]an't|[Cc]ould not) (?:find|locate) (?:the )?"
    r"(?P<d>[\w.+-]{1,60}) (?:library|libraries)\b"
    r"|Unable to load dependency (?P<e>[\w.+-]{1,60})"
    # Named as development files: a system package even when we do not know its name.
    r"|(?P<dev> development (?:files|headers|package|libraries) (?:were |was |are |is )?not found)"
    r"|[Pp]lease install (?:the )?(?P<dev2>[\w.+-]{1,60}) "
    r"(?:development|dev|devel|-dev) (?:package|packages|files|headers|libraries)"
)
# The name before a phrase, read backwards from it: anchoring the pattern on the phrase
# (not on a name that could start anywhere) keeps the scan linear.
_NAME_BACKWARDS = re.compile(r"[\w.+-]{1,60}")
# A line that warns, or says the build goes on without the library, is a probe.
_WARNING = re.compile(r"warn", re.IGNORECASE)
_OPTIONAL = re.compile(r"without|skipp|optional|disabl|fall(?:ing)? ?back", re.IGNORECASE)
_FATAL = re.compile(r"\berror\b|Exception\b|\bfatal\b", re.IGNORECASE)
_FILE_SUFFIX = re.compile(r"\.(?:so|a|h|pc|dll|lib)(?:\.\d{1,6}){0,4}$")
_LXML_LIBS = re.compile(r"make sure the libxml2 and libxslt development packages are installed")
_MYSQLCLIENT = re.compile(r"Can not find valid pkg-config name")

_TOOL = re.compile(
    r"error: command '(?P<a>[^'\n]{1,200})' failed: No such file or directory"
    r"|unable to execute '(?P<b>[^'\n]{1,200})': No such file or directory"
    r"|^[^\n]{0,40}?\b(?:ba)?sh(?:: line \d+)?: (?:\d+: )?(?P<c>[\w.+-]{1,60}): "
    r"(?:command )?not found"
    r"|FileNotFoundError: \[Errno 2\] No such file or directory: '(?P<d>[\w.+/-]{1,200})'"
    r"|error: linker `(?P<e>[\w.+/-]{1,100})` not found"
    r"|ERROR: Unknown compiler\(s\): \[\['(?P<f>[\w.+-]{1,60})'"
    r"|ERROR: Program '(?P<g>[\w.+-]{1,60})' not found or not executable"
    r"|No CMAKE_(?P<h>C|CXX|Fortran)_COMPILER could be found"
    r"|configure: error: no acceptable (?P<i>C) compiler found"
    r"|(?P<rust>Cargo, the Rust package manager, is not installed|can't find Rust compiler"
    r"|Rust compiler not found)"
    r"|(?P<cmake>CMake must be installed to build|Problem with the CMake installation)",
    re.MULTILINE,
)
_CMAKE_COMPILERS = {"C": "gcc", "CXX": "g++", "Fortran": "gfortran"}

_MODULE = re.compile(
    r"^[ \t]*(?:ModuleNotFoundError|ImportError): No module named '?(?P<mod>[\w.]{1,100})'?",
    re.MULTILINE,
)
_NO_DISTRIBUTION = re.compile(
    r"Could not find a version that satisfies the requirement (?P<req>[^\s(]{1,200})"
    r"(?: \(from versions: (?P<versions>[^)\n]{0,400})\))?"
    r"|No matching distribution found for (?P<req2>[^\s]{1,200})"
    # The cross build's own words (cross_build.py): a compiled build requirement whose
    # target wheel is not in the target's wheelhouse.
    r"|::armwheels:: the target has no wheel of (?P<req3>[^\s]{1,200})"
)
# Plain-words network trouble first (it reads better in a summary), then exception names.
_NETWORK_WORDS = (
    r"Temporary failure in name resolution|Name or service not known|Connection reset by peer"
    r"|Connection refused|Connection timed out|Read timed out|Network is unreachable"
    r"|No route to host|HTTP error 5\d\d|\b50[234] (?:Server Error|Service Unavailable"
    r"|Bad Gateway|Gateway)|Could not resolve host|Couldn't resolve host"
    r"|spurious network error|Timeout was reached|Operation timed out"
)
_NETWORK_NAMES = (
    r"NameResolutionError|NewConnectionError|Failed to establish a new connection"
    r"|ConnectionResetError|ConnectTimeoutError|ReadTimeoutError|RemoteDisconnected"
    r"|IncompleteRead|Connection broken|ProxyError|Max retries exceeded"
)
_NETWORK_TROUBLE = re.compile(f"{_NETWORK_WORDS}|{_NETWORK_NAMES}")
_NETWORK_PLAIN = re.compile(_NETWORK_WORDS)
# Lines after which a build gave up because of the network (not a retry that recovered).
_NETWORK_FATAL = re.compile(
    r"ERROR: Could not install packages due to an OSError: (?P<a>[^\n]{1,300})"
    r"|because of HTTP error (?P<b>5\d\d[^\n]{0,200})"
    r"|^[ \t]*(?:pip\._vendor\.)?(?:urllib3|requests)\.exceptions\.(?P<c>\w{1,60}: [^\n]{1,300})"
    r"|fatal: unable to access '[^'\n]{1,300}': (?P<d>[^\n]{1,200})"
    r"|failed to download [^\n]{1,200}"
    r"|error: failed to get `(?P<e>[\w.-]{1,100})` as a dependency",
    re.MULTILINE,
)

_COMPILE = re.compile(
    r"^[ \t]*(?P<where>(?:[A-Za-z]:)?[^\s:]{1,300}:\d+(?::\d+)?): "
    r"(?:fatal )?error: (?P<msg>[^\n]{1,500})",
    re.MULTILINE,
)
_RUST = re.compile(
    r"^[ \t]*error(?P<code>\[E\d{4}\])?: (?P<msg>[^\n]{1,400})\n[ \t]*--> (?P<where>[^\s]{1,300})",
    re.MULTILINE,
)
_CYTHON = re.compile(r"Error compiling Cython file:")
_CYTHON_WHERE = re.compile(
    r"^[ \t]*(?P<where>[^\s:]{1,300}\.(?:pyx|pxd|pxi|py):\d+:\d+): (?P<msg>[^\n]{1,400})",
    re.MULTILINE,
)
_FORTRAN = re.compile(
    r"^[ \t]*(?P<where>[^\s:]{1,300}\.(?:[fF](?:90|95|03|08|or)?):\d+(?::\d+)?):[ \t]*\n"
    r"(?:[^\n]{0,300}\n){0,6}?[ \t]*(?:Fatal )?Error: (?P<msg>[^\n]{1,400})",
    re.MULTILINE,
)
_UNDEFINED = re.compile(r"undefined reference to `(?P<sym>[^'\n]{1,200})'")
_ICE = re.compile(r"internal compiler error: (?P<msg>[^\n]{1,200})")
_BUILD_TEMP = re.compile(r"^(?:[^\s:]*/)?(?:pip-req-build-|pip-install-)[\w-]{1,40}/")

# Errors worth quoting when nothing specific matched, and the generic ones to skip.
_GENERIC_ERROR = re.compile(
    r"^[ \t]*(?:configure: error: (?P<conf>[^\n]{1,300})"
    r"|CMake Error(?: at [^\n]{1,200})?:[ \t]*\n[ \t]*(?P<cmake>[^\n]{1,300})"
    r"|(?P<exc>(?:[A-Za-z_][\w.]{0,80})?(?:Error|Exception)): (?P<excmsg>[^\n]{1,300})"
    r"|error: (?P<err>[^\n]{1,300}))",
    re.MULTILINE,
)
_NOISE = re.compile(
    r"subprocess-exited-with-error|metadata-generation-failed|legacy-install-failure"
    r"|Failed building wheel|Failed to build|returned non-zero exit status"
    r"|failed with exit (?:code|status)|could not compile `|exit status|CalledProcessError"
    r"|Command errored out|did not run successfully|process didn't exit successfully"
    r"|Microsoft Visual"
)


# --- detectors: each returns (position in the text, diagnosis) of its first hit ---------

Found = tuple[int, Diagnosis]


def _header(text: str) -> Found | None:
    match = _HEADER.search(text)
    if match is None:
        return None
    header = match.group("gcc") or match.group("clang")
    top = header.split("/", 1)[0]
    if top in PYTHON_HEADER_DIRS and "/" in header:
        dist = PYTHON_HEADER_DIRS[top]
        return match.start(), _make(
            FailureReason.MISSING_DEPENDENCY,
            f"missing header {header} from Python package {dist}",
            _declare(dist),
            dist,
        )
    # Exact path, then the family directory; never the bare file name (rocksdb/db.h is
    # not Berkeley DB's db.h): no suggestion beats a wrong one.
    packages = HEADERS.get(header) or HEADER_DIRS.get(top if "/" in header else "")
    return match.start(), _needs(
        FailureReason.MISSING_SYSTEM_LIBRARY,
        f"missing header {header}",
        packages,
        header,
    )


def _library_packages(name: str) -> Packages | None:
    if name in LIBRARIES:
        return LIBRARIES[name]
    return next((pkgs for pre, pkgs in LIBRARY_PREFIXES.items() if name.startswith(pre)), None)


def _library(text: str) -> Found | None:
    match = _LIBRARY.search(text)
    if match is None:
        return None
    raw = match.group("lib")
    if raw.startswith(":"):  # -l:libfoo.so.1 names the file itself
        file = raw[1:]
        name = re.sub(r"\.(?:so|a)(?:\.[\d.]+)?$", "", file.removeprefix("lib"))
    else:
        file, name = f"lib{raw}", raw
    return match.start(), _needs(
        FailureReason.MISSING_SYSTEM_LIBRARY,
        f"missing library {file}",
        _library_packages(name),
        file,
    )


def _pkgconfig(text: str) -> Found | None:
    """pkg-config's own errors. Lines CMake prints with "--" are probes unless it then
    says the package was required; the same goes for setup.py files that try pkg-config
    and fall back to defaults, so callers rank this below the compiler's own errors.
    """
    required = _PKGCONFIG_REQUIRED.search(text) is not None
    for match in _PKGCONFIG.finditer(text):
        if match.group("line").strip().startswith("--") and not required:
            continue
        name = match.group("a") or match.group("b") or match.group("c")
        return match.start(), _needs(
            FailureReason.MISSING_SYSTEM_LIBRARY,
            f"pkg-config cannot find {name}",
            PKGCONFIG.get(name) or PKGCONFIG.get(name.lower()),
            name,
        )
    if old := _PKGCONFIG_OLD.search(text):
        name = old.group("want").split()[0]
        return old.start(), _make(
            FailureReason.MISSING_SYSTEM_LIBRARY,
            f"system library too old: {old.group('want')} required, "
            f"{old.group('name')} is {old.group('have')}",
            missing=name,
        )
    return None


def _cmake(text: str) -> Found | None:
    for match in _CMAKE.finditer(text):
        # The same words follow "CMake Warning" for optional packages: only errors count.
        header = text.rfind("CMake ", max(0, match.start() - 2000), match.start())
        if header >= 0 and text.startswith("CMake Warning", header):
            continue
        return _cmake_found(match)
    return None


def _cmake_found(match: re.Match[str]) -> Found:
    name = match.group("a") or match.group("b") or match.group("c") or match.group("d")
    key = name.lower()
    if key in CMAKE_PYTHON:
        dist = CMAKE_PYTHON[key]
        return match.start(), _make(
            FailureReason.MISSING_DEPENDENCY,
            f"CMake cannot find {name}, a Python build dependency",
            _declare(dist),
            dist,
        )
    return match.start(), _needs(
        FailureReason.MISSING_SYSTEM_LIBRARY,
        f"CMake cannot find {name}",
        CMAKE.get(key) or PKGCONFIG.get(key),
        name,
    )


def _meson(text: str) -> Found | None:
    match = _MESON_DEP.search(text)
    if match is None:
        return None
    name = match.group("name")
    key = name.lower()
    if key in CMAKE_PYTHON:
        return match.start(), _make(
            FailureReason.MISSING_DEPENDENCY,
            f"meson cannot find {name}, a Python build dependency",
            _declare(CMAKE_PYTHON[key]),
            name,
        )
    packages = PKGCONFIG.get(key) or CMAKE.get(key)
    return match.start(), _needs(
        FailureReason.MISSING_SYSTEM_LIBRARY,
        f"meson cannot find dependency {name}",
        packages,
        name,
    )


def _config_script(text: str) -> Found | None:
    if match := _CONFIG_SCRIPT.search(text):
        script = match.group("a") or match.group("b")
        library, packages = CONFIG_SCRIPTS[script]
        return match.start(), _needs(
            FailureReason.MISSING_SYSTEM_LIBRARY,
            f"{script} not found (development files of {library})",
            packages,
            library,
        )
    if match := _LXML_LIBS.search(text):
        return match.start(), _needs(
            FailureReason.MISSING_SYSTEM_LIBRARY,
            "missing libxml2 and libxslt development files",
            LXML_LIBRARIES,
            "libxml2",
        )
    if match := _MYSQLCLIENT.search(text):
        return match.start(), _needs(
            FailureReason.MISSING_SYSTEM_LIBRARY,
            "pkg-config cannot find mysqlclient or mariadb",
            PKGCONFIG["mysqlclient"],
            "mysqlclient",
        )
    return None


def _named_library(name: str) -> Packages | None:
    """The packages of a library a setup script names in prose: "jpeg", "libbzip2",
    "HDF5", "libcurl.so", "jpeg2000"; None when no table knows the name."""
    key = _FILE_SUFFIX.sub("", name.strip("'\"`").lower())
    key = key.removesuffix("-devel").removesuffix("-dev")
    bare = key.removeprefix("lib")
    for candidate in dict.fromkeys((key, bare, f"lib{bare}")):
        for table in (SETUP_NAMES, PKGCONFIG, LIBRARIES, CMAKE):
            if candidate in table:
                return table[candidate]
    return _library_packages(bare) if bare else None


def _setup_fatal(text: str) -> Found | None:
    match = _SETUP_FATAL.search(text)
    if match is None:
        return None
    name = match.group("a") or match.group("b") or match.group("c")
    return match.start(), _needs(
        FailureReason.MISSING_SYSTEM_LIBRARY,
        f"missing headers or library files of {name}",
        _named_library(name),
        name,
    )


def _name_before(text: str, end: int) -> str:
    """The word that ends at `end` ("zlib" in "zlib library not found"), or ""."""
    window = text[max(0, end - 60) : end][::-1]
    match = _NAME_BACKWARDS.match(window)
    return match.group(0)[::-1] if match else ""


def _setup_library(text: str) -> Found | None:
    probes: dict[int, bool] = {}  # line start -> whether that line is a probe
    for match in _SETUP_LIBRARY.finditer(text):
        start = text.rfind("\n", 0, match.start()) + 1
        if start not in probes:
            end = text.find("\n", match.end())
            line = text[start : end if end >= 0 else len(text)]
            probes[start] = _WARNING.search(line) is not None or (
                _OPTIONAL.search(line) is not None and _FATAL.search(line) is None
            )
        if probes[start]:
            continue  # a probe that carries on without the library
        dev = bool(match.group("dev") or match.group("dev2"))
        if match.group("c") or match.group("dev"):
            name = _name_before(text, match.start())
        else:
            name = next(group for group in match.group("a", "b", "d", "e", "dev2") if group)
        packages = _named_library(name) if name else None
        if not name or (packages is None and not dev):
            continue
        if dev:
            summary = f"missing {name} development files"
        else:
            summary = f"the build cannot find library {name}"
        return match.start(), _needs(FailureReason.MISSING_SYSTEM_LIBRARY, summary, packages, name)
    return None


def _tool_name(command: str) -> str:
    """`/usr/bin/aarch64-linux-gnu-gcc` -> gcc; `x86_64-linux-gnu-g++` -> g++."""
    base = command.rsplit("/", 1)[-1]
    for name in sorted(TOOLS, key=len, reverse=True):
        if base == name or (base.endswith("-" + name) and name in {"gcc", "g++", "gfortran"}):
            return name
    return base


def _tool(text: str) -> Found | None:
    for match in _TOOL.finditer(text):
        if match.group("rust"):
            return match.start(), _make(
                FailureReason.MISSING_BUILD_TOOL,
                "missing Rust compiler (cargo/rustc)",
                TOOL_HINTS["cargo"],
                "cargo",
            )
        if match.group("cmake"):
            return match.start(), _missing_tool(match.start(), "cmake")
        if compiler := match.group("h"):
            return match.start(), _missing_tool(match.start(), _CMAKE_COMPILERS[compiler])
        if match.group("i"):
            return match.start(), _missing_tool(match.start(), "gcc")
        command = next(group for group in match.group("a", "b", "c", "d", "e", "f", "g") if group)
        name = _tool_name(command)
        if match.group("d") and name not in TOOLS and name not in TOOL_HINTS:
            continue  # a missing data file, not a program
        if name in CONFIG_SCRIPTS:
            continue  # reported by _config_script, naming the library
        return match.start(), _missing_tool(match.start(), name)
    return None


def _missing_tool(position: int, name: str) -> Diagnosis:
    summary = f"missing build tool {name}"
    if name in TOOL_HINTS:
        return _make(FailureReason.MISSING_BUILD_TOOL, summary, TOOL_HINTS[name], name)
    return _needs(FailureReason.MISSING_BUILD_TOOL, summary, TOOLS.get(name), name)


def _module(text: str) -> Found | None:
    match = _MODULE.search(text)
    if match is None:
        return None
    module = match.group("mod")
    top = module.split(".", 1)[0]
    if module in REMOVED_STDLIB or top in REMOVED_STDLIB:
        gone = module if module in REMOVED_STDLIB else top
        return match.start(), _make(
            FailureReason.UNSUPPORTED_PYTHON,
            f"the build imports {gone}, removed from the standard library in Python "
            f"{REMOVED_STDLIB[gone]}",
            missing=gone,
        )
    if module == "numpy.distutils":
        return match.start(), _make(
            FailureReason.UNSUPPORTED_PYTHON,
            "the build needs numpy.distutils, gone from numpy 2 and from Python 3.12",
            missing=module,
        )
    dist = PYPI_NAMES.get(top, top)
    return match.start(), _make(
        FailureReason.MISSING_DEPENDENCY,
        f"missing Python build dependency {dist} (No module named '{module}')",
        _declare(dist),
        dist,
    )


def missing_requirement(log_text: str | bytes) -> str | None:
    """The requirement pip could not find ("No matching distribution found for X"), as
    pip wrote it, or None: what an offline build asks its builder to prefetch."""
    text = _prepare(log_text) if isinstance(log_text, bytes) else log_text
    match = _NO_DISTRIBUTION.search(text)
    if match is None:
        return None
    return match.group("req") or match.group("req2") or match.group("req3")


def offline_network_failure(log_text: str | bytes) -> str | None:
    """The note for an offline build that gave up on a download of its own (setup code
    fetching a file), or None when its log shows no such failure."""
    text = _prepare(log_text) if isinstance(log_text, bytes) else log_text
    found = _network(text)
    if found is None:
        return None
    return (
        f"offline build failed: the build tried the network ({found[1].summary}); "
        "a recipe with egress = true lets it download"
    )


def offline_failure(requirement: str, why: str) -> str:
    """The note an offline build ends with when `requirement` cannot be had (`why`: "has
    no wheel for aarch64 cp311", "is still missing after 3 rounds")."""
    return (
        f"offline build failed: {requirement} {why}; "
        "a recipe with egress = true lets the build fetch it"
    )


def _no_distribution(text: str) -> Found | None:
    """pip could not get a build requirement: the network, the Python version, or the
    requirement itself (it does not exist, or no release matches its pin).
    """
    match = _NO_DISTRIBUTION.search(text)
    if match is None:
        return None
    requirement = match.group("req") or match.group("req2") or match.group("req3")
    versions = (match.group("versions") or "").strip()
    if trouble := _NETWORK_PLAIN.search(text) or _NETWORK_TROUBLE.search(text):
        return match.start(), _make(
            FailureReason.NETWORK,
            f"could not download build dependency {requirement} ({trouble.group(0)})",
            missing=requirement,
        )
    if _IGNORED_PYTHON.search(text):
        return match.start(), _make(
            FailureReason.UNSUPPORTED_PYTHON,
            f"build dependency {requirement} has no release for this Python",
            missing=requirement,
        )
    if versions and versions != "none":
        shown = versions if len(versions) <= 60 else "..." + versions[-57:]
        summary = f"no release of build dependency {requirement} matches (have: {shown})"
    else:
        summary = f"build dependency {requirement} not found on the package index"
    found = _make(FailureReason.MISSING_DEPENDENCY, summary, missing=requirement)
    if match.group("req3"):
        # The cross build's own words: the target has no wheel of it anywhere it looked.
        summary = f"build dependency {requirement} has no wheel for the target"
        found = replace(found, summary=summary, needs_wheel=requirement)
    return match.start(), found


def _network(text: str) -> Found | None:
    for match in _NETWORK_FATAL.finditer(text):
        # An OSError may be a full disk or a permission problem; cargo names the network
        # trouble on its "Caused by" lines, after the fatal one.
        where = match.group(0) if match.group("a") else text
        if not _NETWORK_TROUBLE.search(where):
            continue
        detail = next((group for group in match.groups() if group), match.group(0))
        if match.group("e"):
            detail = f"cargo could not fetch {detail}"
        return match.start(), _make(FailureReason.NETWORK, f"network error: {detail}")
    return None


def _relative(where: str) -> str:
    return _BUILD_TEMP.sub("", where)


def _compile(text: str) -> Found | None:
    hits: list[Found] = []
    if match := _COMPILE.search(text):
        line = f"{_relative(match.group('where'))}: error: {match.group('msg')}"
        hits.append((match.start(), _make(FailureReason.COMPILE_ERROR, _one_line(line, 200))))
    if match := _RUST.search(text):
        line = f"{match.group('where')}: error{match.group('code') or ''}: {match.group('msg')}"
        hits.append((match.start(), _make(FailureReason.COMPILE_ERROR, _one_line(line, 200))))
    if (anchor := _CYTHON.search(text)) and (match := _CYTHON_WHERE.search(text, anchor.end())):
        line = f"Cython: {_relative(match.group('where'))}: {match.group('msg')}"
        hits.append((anchor.start(), _make(FailureReason.COMPILE_ERROR, _one_line(line, 200))))
    if match := _FORTRAN.search(text):
        line = f"{_relative(match.group('where'))}: Error: {match.group('msg')}"
        hits.append((match.start(), _make(FailureReason.COMPILE_ERROR, _one_line(line, 200))))
    if match := _UNDEFINED.search(text):
        line = f"link error: undefined reference to `{match.group('sym')}`"
        hits.append((match.start(), _make(FailureReason.COMPILE_ERROR, _one_line(line, 200))))
    if match := _ICE.search(text):
        line = f"internal compiler error: {match.group('msg')}"
        hits.append((match.start(), _make(FailureReason.COMPILE_ERROR, line, text=line)))
    return min(hits, key=lambda hit: hit[0]) if hits else None


def _oom(text: str) -> Diagnosis | None:
    match = _OOM.search(text)
    if match is None:
        return None
    program = next((g for g in match.group("prog", "prog2", "prog3", "prog4") if g), None)
    if program:
        return _make(
            FailureReason.OUT_OF_MEMORY, f"out of memory: {program} was killed", missing=program
        )
    return _make(FailureReason.OUT_OF_MEMORY, f"out of memory ({match.group(0).strip()})")


def _broken_builder(text: str) -> Diagnosis | None:
    """Failures of the builder, not the package: worth a retry, maybe on another host."""
    if match := _QEMU.search(text):
        return _make(FailureReason.BUILDER_ERROR, f"the emulator crashed: {match.group(0)}")
    if _NO_SPACE.search(text):
        return _make(FailureReason.BUILDER_ERROR, "the builder ran out of disk space", text=text)
    return None


def _unsupported_python(text: str) -> Diagnosis | None:
    if match := _PIP_PYTHON.search(text):
        who = match.group("pkg") or "the package"
        return _make(
            FailureReason.UNSUPPORTED_PYTHON,
            f"{who} requires Python {match.group('want')}, this build uses {match.group('have')}",
        )
    if match := _SETUP_PYTHON.search(text):
        return _make(FailureReason.UNSUPPORTED_PYTHON, f"setup says: {match.group('msg')}")
    return None


# Specific causes, found where they first appear; the earliest wins ("first real error").
_DETECTORS: tuple[Callable[[str], Found | None], ...] = (
    _header,
    _library,
    _cmake,
    _meson,
    _config_script,
    _setup_fatal,
    _tool,
    _module,
    _no_distribution,
    _network,
    _compile,
)


def _from_log(text: str) -> Diagnosis | None:
    """The log's own explanation, if it has one.

    Out of memory comes first: a killed compiler leaves a trail of follow-on errors.
    Then Python-version mismatches, which pip reports in plain words. Otherwise the
    earliest specific error wins; pkg-config messages and a setup script's generic "X
    library not found" only when nothing else matched, since setup.py files often probe
    for a library and carry on when it is not there.
    """
    if found := _oom(text) or _broken_builder(text) or _unsupported_python(text):
        return found
    hits = [hit for detect in _DETECTORS if (hit := detect(text)) is not None]
    if hits:
        # Compare whole lines: several patterns can hit one line (a missing header is
        # also a compiler error), and then the more specific detector, listed first, wins.
        return min(hits, key=lambda hit: text.rfind("\n", 0, hit[0]))[1]
    late = [hit for detect in (_pkgconfig, _setup_library) if (hit := detect(text))]
    if late:
        return min(late, key=lambda hit: hit[0])[1]
    return None


# auditwheel's words for a wheel with no compiled file at all.
_NOT_PLATFORM = re.compile(r"This does not look like a platform wheel")
_LEFT_OUT_CAUSES: tuple[Callable[[str], Found | None], ...] = (
    _header,
    _library,
    _config_script,
    _setup_fatal,
    _pkgconfig,
    _setup_library,
)


def _left_out(text: str) -> Diagnosis | None:
    """A wheel with no compiled code (pure-Python, or platform-tagged with no ELF file)
    from a project whose optional extension did not compile because a system library is
    missing (pyyaml without yaml.h "falls back to pure Python"): that library is the
    cause, named with its package, so that the farm can install it and build again."""
    hits = [hit for detect in _LEFT_OUT_CAUSES if (hit := detect(text)) is not None]
    missing = [h for h in hits if h[1].reason is FailureReason.MISSING_SYSTEM_LIBRARY]
    if not missing:
        return None
    found = min(missing, key=lambda h: h[0])[1]
    summary = _one_line(f"the compiled extension was left out: {found.summary}")
    return replace(found, summary=summary)


def _fallback_summary(text: str) -> str:
    """The first error line that says something, when no known pattern matched."""
    if "::armwheels:: no wheel produced" in text:
        return "pip finished without producing a wheel"
    for match in _GENERIC_ERROR.finditer(text):
        if _NOISE.search(match.group(0)):
            continue
        if message := match.group("conf"):
            return _one_line(f"configure: error: {message}", 200)
        if message := match.group("cmake"):
            return _one_line(f"CMake Error: {message}", 200)
        if message := match.group("excmsg"):
            return _one_line(f"{match.group('exc')}: {message}", 200)
        if message := match.group("err"):
            return _one_line(f"error: {message}", 200)
    return EXIT_CODES[EXIT_BUILD_FAILED][1]


# --- auditwheel --------------------------------------------------------------------------

# auditwheel's words for a wheel whose symbols need a newer glibc than the policy's.
NEWER_SYMBOLS = "too-recent versioned symbols"
_AW_CANNOT = re.compile(
    r"cannot repair \"(?P<wheel>[^\"\n]{1,300})\" to \"(?P<plat>[^\"\n]{1,80})\" ABI because "
    r"(?:of the presence of )?(?:it )?(?P<why>[^.\n]{1,200})"
)
_AW_CONSTRAINT = re.compile(
    r"constrains the platform tag to\s+\"(?P<tag>[\w.-]{1,80})\""
    r"|consistent with the following\s+platform tag:\s+\"(?P<tag2>[\w.-]{1,80})\""
)
_AW_SYMBOLS = re.compile(
    r"(?P<lib>[\w.+-]{1,80}\.so[\w.]{0,20}) with\s+versions\s+\{(?P<versions>[^}]{0,2000})\}"
)
_AW_MISSING = re.compile(r"required library \"(?P<lib>[^\"\n]{1,200})\" could not be located")
_AW_ERROR = re.compile(
    r"auditwheel(?: repair)?: error: (?P<msg>[^\n]{1,300})"
    r"|(?P<msg2>This does not look like a platform wheel[^\n]{0,200})"
    r"|(?P<msg3>Invalid binary wheel[^\n]{0,200})"
    r"|(?P<msg4>can't repair wheel [^\n]{1,200})"
)


_AW_VERSION_SET = re.compile(r"'([\w.]{1,40})'")
_AW_PLATFORM = re.compile(
    r"(?P<policy>(?P<family>manylinux|musllinux)(?:_\d{1,3}_\d{1,3}|1|2010|2014))_(?P<arch>\w{1,20})"
)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d{1,6}", version)[:6])


@functools.lru_cache(maxsize=64)
def _allowed_symbols(platform: str) -> Mapping[str, frozenset[str]] | None:
    """The symbol versions auditwheel's policy `platform` (manylinux2014_aarch64,
    musllinux_1_2_armv7l...) allows, per family ({"GLIBC": {"2.17", ...}, "CXXABI": ...}),
    or None when auditwheel has no such policy."""
    match = _AW_PLATFORM.fullmatch(platform)
    if match is None:
        return None
    musl = match.group("family") == "musllinux"
    try:
        policies = WheelPolicies(
            libc=Libc.MUSL if musl else Libc.GLIBC,
            arch=Architecture(match.group("arch")),
            musl_policy=match.group("policy") if musl else None,
        )
        symbol_versions: Mapping[str, frozenset[str]] = policies.get_policy_by_name(
            platform
        ).symbol_versions
    except (ValueError, LookupError, InvalidLibcError):
        return None
    return symbol_versions


def _newest_per_family(symbols: list[str]) -> list[str]:
    """The newest version of each family: GLIBCXX_3.4 and CXXABI_1.3.9 are not comparable."""
    newest: dict[str, str] = {}
    for symbol in symbols:
        family = symbol.partition("_")[0]
        if family not in newest or _version_key(symbol) > _version_key(newest[family]):
            newest[family] = symbol
    return [newest[family] for family in sorted(newest)]


def _exceeds(symbol: str, allowed: Mapping[str, frozenset[str]]) -> bool:
    """Whether a policy forbids `symbol` (GLIBC_2.25); like auditwheel, a family the
    policy does not list is not its concern."""
    family, _, version = symbol.partition("_")
    return family in allowed and version not in allowed[family]


def _too_recent_symbols(text: str, platform: str) -> str:
    """The symbols that raise the wheel past `platform`, the policy auditwheel refused:
    per library, the newest version of each family the policy does not allow, e.g.
    "libstdc++.so.6 CXXABI_1.3.9, GLIBCXX_3.4.21". Without the policy's data, the newest
    version of each family the wheel uses."""
    allowed = _allowed_symbols(platform)
    used: dict[str, list[str]] = {}
    for match in _AW_SYMBOLS.finditer(text):
        versions = _AW_VERSION_SET.findall(match.group("versions"))
        used.setdefault(match.group("lib"), []).extend(versions)
    if allowed is not None:
        exceeding = {
            lib: [symbol for symbol in symbols if _exceeds(symbol, allowed)]
            for lib, symbols in used.items()
        }
        if any(exceeding.values()):
            used = exceeding
    needs = [
        f"{lib} {', '.join(_newest_per_family(symbols))}"
        for lib, symbols in used.items()
        if symbols
    ]
    return "; ".join(needs)


# builder/scripts/distribution_wheel.py's refusals (a distribution target's repair step).
_DISTRIBUTION_REFUSAL = re.compile(
    r"::armwheels:: (?P<what>the wheel loads a library from outside the distribution: [^\n]{1,300}"
    r"|cannot tag [^\n]{1,300}|cannot list the packages the wheel links: [^\n]{1,300})"
)


def _auditwheel(text: str) -> Diagnosis:
    if match := _DISTRIBUTION_REFUSAL.search(text):
        return _make(FailureReason.AUDITWHEEL_REJECTED, match.group("what"))
    if match := _AW_CANNOT.search(text):
        why = match.group("why").strip()
        summary = f"auditwheel cannot repair to {match.group('plat')}: {why}"
        if constraint := _AW_CONSTRAINT.search(text):
            summary += f"; the wheel needs {constraint.group('tag') or constraint.group('tag2')}"
        if needs := _too_recent_symbols(text, match.group("plat")):
            summary += f" ({needs})"
        return _make(FailureReason.AUDITWHEEL_REJECTED, summary)
    if match := _AW_MISSING.search(text):
        return _make(
            FailureReason.AUDITWHEEL_REJECTED,
            f"auditwheel: required library {match.group('lib')} could not be located",
            missing=match.group("lib"),
        )
    if match := _AW_ERROR.search(text):
        message = next(group for group in match.groups() if group)
        return _make(FailureReason.AUDITWHEEL_REJECTED, f"auditwheel: {message}")
    return _make(FailureReason.AUDITWHEEL_REJECTED, EXIT_CODES[EXIT_AUDITWHEEL][1])
