"""Which kernels ran under qemu: the guest code qemu translated (`-d in_asm`: every translation block
once, as it is first executed), placed in the runtime's libraries by their executable mappings, read
for the instruction classes each ISA path uses and, where the library keeps its symbol table, named
by the function (XNNPACK microkernels carry their ISA in the name: `..._4x16c4__neondot`)."""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# AT_HWCAP / AT_HWCAP2 bits (Linux arch/arm64/include/uapi/asm/hwcap.h)
HWCAP = {"fphp": 1 << 9, "asimdhp": 1 << 10, "asimddp": 1 << 20, "sve": 1 << 22}
HWCAP2 = {"sve2": 1 << 1, "i8mm": 1 << 13, "bf16": 1 << 14, "sme": 1 << 23}

# XNNPACK's microkernel ISA tags, the more specific first (a name holds the first one that matches)
UKERNEL_ISAS = ("neoni8mm", "neondotfp16arith", "neondot", "neonfp16arith", "neonfp16", "neonbf16", "neonfma", "neonv8",
                "sme2", "sme", "sve2", "sve", "neon", "scalar")
_LINE = re.compile(r"^0x([0-9a-f]+):\s+[0-9a-f]{8}\s+(\S+)\s*(.*)$")
_FP16_VEC = re.compile(r"\bv\d+\.(8h|4h)\b|\bh\d+\b")
_SVE = re.compile(r"\bz\d+\.")


def isa_class(mnemonic: str, operands: str) -> str | None:
    """The ISA path one instruction belongs to, for the classes that tell kernels apart."""
    if mnemonic in ("smmla", "ummla", "usmmla", "usdot", "sudot", "bfmmla"):
        return "i8mm"
    if mnemonic in ("sdot", "udot"):
        return "dotprod"
    if _SVE.search(operands) or mnemonic in ("smstart", "smstop"):
        return "sve/sme"
    if mnemonic.startswith("f") and _FP16_VEC.search(operands) and not mnemonic.startswith("fcvt"):
        return "fp16"
    if mnemonic in ("smlal", "smlal2", "smull", "smull2", "sadalp", "smlsl", "smlsl2"):
        return "neon-int8"
    if mnemonic in ("fmla", "fmul", "fadd", "fmax", "fmin") and ".4s" in operands:
        return "neon-fp32"
    return None


@dataclass
class Library:
    path: str
    start: int
    end: int
    base: int = 0
    symbols: list[tuple[int, int, str]] = field(default_factory=list)  # (address, size, name), sorted
    symtab: str = "none"

    def function(self, address: int) -> str | None:
        if not self.symbols:
            return None
        offset = address - self.base
        i = bisect.bisect_right(self.symbols, (offset, float("inf"), "")) - 1
        if i >= 0 and self.symbols[i][0] <= offset < self.symbols[i][0] + self.symbols[i][1]:
            return self.symbols[i][2]
        return None


def elf_functions(path: str | Path) -> tuple[list[tuple[int, int, str]], str, int]:
    """(FUNC symbols (value, size, name) sorted, 'symtab'|'dynsym'|'none', the executable PT_LOAD's
    page-aligned vaddr) of a 64-bit little-endian ELF shared library."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return [], "none", 0
    (phoff, shoff) = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    exec_vaddr = 0
    for i in range(phnum):
        p_type, p_flags, _, p_vaddr = struct.unpack_from("<IIQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_flags & 1:
            exec_vaddr = p_vaddr & ~0xFFF
            break
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for kind, label in ((2, "symtab"), (11, "dynsym")):
        for sec in sections:
            if sec[1] != kind:
                continue
            strtab = sections[sec[6]]
            str_off = strtab[4]
            syms = []
            for j in range(sec[5] // 24):
                st_name, st_info, _, _, st_value, st_size = struct.unpack_from("<IBBHQQ", data, sec[4] + j * 24)
                if st_info & 0xF == 2 and st_size and st_value:
                    end = data.index(b"\0", str_off + st_name)
                    syms.append((st_value, st_size, data[str_off + st_name:end].decode(errors="replace")))
            if syms:
                return sorted(syms), label, exec_vaddr
    return [], "none", exec_vaddr


@dataclass
class Kernels:
    """What ran in one library: instruction counts per ISA class, and the named functions that ran."""

    library: str
    symtab: str
    isa: dict[str, int]
    ukernels: list[str]  # XNNPACK microkernels (by symbol name) whose code ran
    functions: int  # named functions whose code ran

    def ukernel_isas(self) -> list[str]:
        """The ISA tags of the microkernels that ran (`xnn_qs8_..._ukernel_4x16c4__neondot` -> neondot)."""
        found = set()
        for name in self.ukernels:
            tail = name.rsplit("__", 1)[-1]
            found.add(next((tag for tag in UKERNEL_ISAS if tag in tail), "other"))
        return sorted(found)

    def to_dict(self) -> dict:
        return {"library": self.library, "symbols": self.symtab, "isa_instructions": self.isa,
                "ukernel_isas": self.ukernel_isas(), "ukernels": self.ukernels, "functions": self.functions}


def read_kernels(log: Path, maps: list[tuple[str, str]], libraries: list[str]) -> list[Kernels]:
    """The instructions qemu translated inside each of `libraries` (matched by file name in `maps`:
    [(start-end, path)]), classified and attributed to functions."""
    libs: list[Library] = []
    for rng, path in maps:
        if Path(path).name in libraries:
            start, end = (int(x, 16) for x in rng.split("-"))
            syms, label, exec_vaddr = elf_functions(path)
            libs.append(Library(path, start, end, start - exec_vaddr, syms, label))
    counts = {lib.path: {} for lib in libs}
    funcs: dict[str, set[str]] = {lib.path: set() for lib in libs}
    with open(log, errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            addr = int(m.group(1), 16)
            lib = next((lb for lb in libs if lb.start <= addr < lb.end), None)
            if lib is None:
                continue
            cls = isa_class(m.group(2), m.group(3))
            if cls:
                counts[lib.path][cls] = counts[lib.path].get(cls, 0) + 1
            name = lib.function(addr)
            if name:
                funcs[lib.path].add(name)
    return [Kernels(Path(lb.path).name, lb.symtab, dict(sorted(counts[lb.path].items())),
                    sorted(n for n in funcs[lb.path] if "ukernel" in n), len(funcs[lb.path])) for lb in libs]


def cpu_features(hwcap: int, hwcap2: int) -> list[str]:
    """The features the guest CPU offers the runtime, by the names Linux gives them."""
    return [n for n, bit in HWCAP.items() if hwcap & bit] + [n for n, bit in HWCAP2.items() if hwcap2 & bit]
