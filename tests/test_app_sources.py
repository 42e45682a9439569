"""The demo apps' sources and build settings, checked where Linux CI can check them (no Android SDK,
no Xcode): every Kotlin, Gradle Kotlin script and Swift file parsed with its real grammar
(tree-sitter; a syntax error fails naming file and line), and the settings Gradle or Xcode reject
before compiling anything: SWIFT_VERSION, our type names against the classes Xcode generates for a
bundled .mlpackage, dependencies outside the version catalog, SDK levels and deployment targets
below what the artifacts and the libraries need. tests/test_apps.py checks the XML, plist, TOML and
YAML files and what `--for-apps` installs."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import tree_sitter_kotlin
import tree_sitter_swift
import yaml
from tree_sitter import Language, Node, Parser

from aspp_edge.apps import APP_FILES

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "mobile_demo"
ANDROID, IOS = DEMO / "android", DEMO / "ios"
GRAMMARS = {".kt": tree_sitter_kotlin, ".kts": tree_sitter_kotlin, ".swift": tree_sitter_swift}
BUILD_OUTPUT = {"build", ".gradle", ".idea", "DerivedData"}  # folders of generated files, never sources


@cache
def parser(suffix: str) -> Parser:
    return Parser(Language(GRAMMARS[suffix].language()))


def parse(path: Path, source: bytes | None = None) -> Node:
    return parser(path.suffix).parse(path.read_bytes() if source is None else source).root_node


def app_sources(root: Path = DEMO) -> list[Path]:
    """Every Kotlin (.kt), Gradle Kotlin script (.kts) and Swift file of the apps."""
    return sorted(p for p in root.rglob("*") if p.suffix in GRAMMARS and p.is_file()
                  and not any(part in BUILD_OUTPUT or part.endswith(".xcodeproj") for part in p.relative_to(root).parts))


@dataclass(frozen=True)
class SyntaxProblem:
    path: Path
    line: int  # 1-based: the innermost error
    column: int
    first: int  # the lines the parser skipped to recover (an ERROR node), first..last
    last: int
    what: str

    def __str__(self) -> str:
        skipped = f" (the parser skipped lines {self.first}-{self.last} to recover)" if self.first != self.last else ""
        return f"{self.path}:{self.line}:{self.column}: {self.what}{skipped}"


def innermost_error(node: Node) -> Node:
    """The first ERROR or MISSING node nested inside `node`, deepest first (or `node` itself)."""
    for child in node.children:
        if child.is_missing:
            return child
        if child.has_error:  # true for an ERROR node and for any node holding one
            return innermost_error(child)
    return node


def syntax_problems(path: Path, source: bytes | None = None) -> list[SyntaxProblem]:
    """One problem per outermost ERROR node (the region the parser skipped to recover) and per MISSING
    node of the file's tree, in source order, at the innermost error inside it: usually the broken
    line itself, while the skipped region can start many lines earlier."""
    found: list[SyntaxProblem] = []
    stack = [parse(path, source)]
    while stack:
        node = stack.pop()
        if node.is_missing or node.is_error:
            inner = innermost_error(node) if node.is_error else node
            (row, col) = inner.start_point
            text = inner.text.decode(errors="replace").strip().splitlines()
            what = f"missing {inner.type!r}" if inner.is_missing else f"syntax error at {text[0][:60] if text else ''!r}"
            found.append(SyntaxProblem(path, row + 1, col + 1, node.start_point[0] + 1, node.end_point[0] + 1, what))
        elif node.has_error:
            stack.extend(reversed(node.children))
    return found


# ---- every source parses ----

def test_every_app_source_parses_with_its_grammar():
    sources = app_sources()
    assert {p.suffix for p in sources} == {".kt", ".kts", ".swift"} and len(sources) >= 12
    problems = []
    for path in sources:
        source = path.read_bytes()
        root = parse(path, source)
        # the tree covers the whole file and holds declarations (not an empty parse)
        assert root.type == "source_file" and root.end_byte == len(source) and root.named_child_count > 0, path
        problems += [str(p) for p in syntax_problems(path, source)]
    assert not problems, "syntax errors in the app sources:\n" + "\n".join(problems)


# (file, the line after which a broken line goes, the broken line)
INJECTIONS = [
    ("android/app/src/main/java/dev/asppedge/demo/MainActivity.kt", "override fun onDestroy() {", "        val closing = )"),
    ("android/app/src/main/java/dev/asppedge/demo/Segmenters.kt", "fun segment(image: Bitmap): SegmentationResult {",
     "        val (letterboxed, box = Contract.letterbox(image, 1, 1)"),
    ("android/app/build.gradle.kts", "defaultConfig {", "        minSdk = = 28"),
    ("ios/AsppEdgeDemo/Segmenters.swift", "func segment(_ image: CGImage) throws -> SegmentationResult {", "        let m = )"),
    ("ios/AsppEdgeDemoTests/SampleMaskTests.swift", "func testCoreMLMatchesHostDemo() throws {",
     "        try check(CoreMLSegmenter(, expected: Assets.coremlExpectedMask)"),
]


@pytest.mark.parametrize("relative, anchor, broken", INJECTIONS, ids=[f"{Path(i[0]).name}" for i in INJECTIONS])
def test_a_syntax_error_injected_into_a_copy_is_reported_with_file_and_line(tmp_path, relative, anchor, broken):
    lines = (DEMO / relative).read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if anchor in line) + 1  # 0-based index of the inserted line
    copy = tmp_path / Path(relative).name
    copy.write_text("".join(lines[:at] + [broken + "\n"] + lines[at:]))
    assert syntax_problems(DEMO / relative) == []  # the original is clean: the error is the injected line
    problems = syntax_problems(copy)
    assert problems, f"{broken!r} in {relative} parsed without an error"
    first = problems[0]
    # the first problem names the copy and the injected line (line at + 1), inside the skipped region
    assert str(first).startswith(f"{copy}:{at + 1}:") and first.first <= at + 1 <= first.last, [str(p) for p in problems]


# ---- settings Xcode rejects ----

XCODE_SWIFT_VERSIONS = {"4.0", "4.2", "5.0", "6.0"}  # language modes; Xcode stops the build on any other value


def setting_values(node, key: str, where: str = "") -> dict[str, str]:
    """Every value of build setting `key` anywhere in a parsed XcodeGen spec: YAML path -> value as text."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found[f"{where}.{k}".lstrip(".")] = str(v)
            else:
                found |= setting_values(v, key, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found |= setting_values(v, key, f"{where}[{i}]")
    return found


def xcconfig_values(key: str) -> dict[str, str]:
    found = {}
    for path in IOS.rglob("*.xcconfig"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if m := re.match(rf"\s*{key}\s*=\s*(\S+)", line):
                found[f"{path.relative_to(IOS)}:{n}"] = m.group(1)
    return found


def swift_version_problems(project: dict) -> list[str]:
    values = setting_values(project, "SWIFT_VERSION") | xcconfig_values("SWIFT_VERSION")
    if not values:
        return ["no SWIFT_VERSION set: Xcode needs one for the app target"]
    return [f"{where}: SWIFT_VERSION {value!r} is not a language mode Xcode accepts ({', '.join(sorted(XCODE_SWIFT_VERSIONS))})"
            for where, value in values.items() if value not in XCODE_SWIFT_VERSIONS]


def project() -> dict:
    return yaml.safe_load((IOS / "project.yml").read_text())


def test_swift_version_is_a_language_mode_xcode_accepts():
    spec = project()
    assert "SWIFT_VERSION" in spec["targets"]["AsppEdgeDemo"]["settings"]["base"]
    assert swift_version_problems(spec) == []


@pytest.mark.parametrize("value", ["5.10", "5.9", "6.1", "5"])
def test_the_swift_version_check_rejects_a_compiler_version(value):
    spec = project()
    spec["targets"]["AsppEdgeDemo"]["settings"]["base"]["SWIFT_VERSION"] = value
    problems = swift_version_problems(spec)
    assert len(problems) == 1 and f"'{value}'" in problems[0] and "targets.AsppEdgeDemo.settings.base" in problems[0]


def bundled_model_names() -> set[str]:
    """Stems of the Core ML models the iOS app bundles: the name `--for-apps` installs, and any
    model already in the app's folder (the Models folder is git-ignored, but a local build has it)."""
    names = {Path(APP_FILES["coreml"][0]).stem}
    names |= {p.stem for p in IOS.rglob("*") if p.suffix in (".mlpackage", ".mlmodel")}
    return names


def generated_class_names(model: str) -> set[str]:
    """The Swift classes Xcode's Core ML code generation writes for `<model>.mlpackage`."""
    return {model, f"{model}Input", f"{model}Output"}


def top_level_types(path: Path, source: bytes | None = None) -> dict[str, int]:
    """Types a Swift file declares at file scope (class, struct, enum, actor, protocol, typealias;
    not extensions): name -> line."""
    found = {}
    for node in parse(path, source).named_children:
        kind = node.child_by_field_name("declaration_kind")
        if node.type in ("class_declaration", "protocol_declaration", "typealias_declaration") and \
                not (kind is not None and kind.type == "extension"):
            name = node.child_by_field_name("name")
            found[name.text.decode()] = name.start_point[0] + 1
    return found


def type_name_collisions(paths: list[Path], models: set[str], sources: dict[Path, bytes] | None = None) -> list[str]:
    generated = {name: model for model in models for name in generated_class_names(model)}
    return [f"{path}:{line}: type {name} collides with the class Xcode generates for {generated[name]}.mlpackage"
            for path in paths for name, line in top_level_types(path, (sources or {}).get(path)).items() if name in generated]


def swift_sources() -> list[Path]:
    return [p for p in app_sources() if p.suffix == ".swift"]


def test_no_app_type_is_named_like_a_class_xcode_generates_for_a_bundled_model():
    assert "Segmenter" in bundled_model_names()
    declared = {name for path in swift_sources() for name in top_level_types(path)}
    assert {"MaskSegmenter", "CoreMLSegmenter", "ArtifactManifest", "SampleMaskTests"} <= declared  # the walk finds types
    assert type_name_collisions(swift_sources(), bundled_model_names()) == []


@pytest.mark.parametrize("old, new", [("protocol MaskSegmenter {", "protocol Segmenter {"),
                                      ("struct SegmentationResult {", "struct SegmenterOutput {")])
def test_the_type_name_check_catches_a_collision(old, new):
    path = IOS / "AsppEdgeDemo/Segmenters.swift"
    text = path.read_text()
    assert old in text
    line = text[:text.index(old)].count("\n") + 1
    problems = type_name_collisions([path], {"Segmenter"}, {path: text.replace(old, new).encode()})
    assert problems == [f"{path}:{line}: type {new.split()[1]} collides with the class Xcode generates for Segmenter.mlpackage"]


def coreml_deployment_target() -> int:
    """The iOS version the Core ML exporter targets (W8A8 needs iOS 17), read from the exporter."""
    found = re.findall(r"minimum_deployment_target\s*=\s*ct\.target\.iOS(\d+)", (ROOT / "src/aspp_edge/export/coreml.py").read_text())
    assert found, "src/aspp_edge/export/coreml.py names no ct.target.iOS<N> deployment target"
    return max(map(int, found))


def test_ios_deployment_target_is_what_the_artifacts_and_executorch_need():
    needs = {f"Core ML W8A8 (export/coreml.py targets iOS {coreml_deployment_target()})": coreml_deployment_target(),
             "ExecuTorch's Swift package (iOS 17 and newer)": 17}
    spec = project()
    targets = {"options.deploymentTarget": spec["options"]["deploymentTarget"]["iOS"]}
    targets |= {f"targets.{name}.deploymentTarget": t["deploymentTarget"] for name, t in spec["targets"].items() if "deploymentTarget" in t}
    targets |= setting_values(spec, "IPHONEOS_DEPLOYMENT_TARGET") | xcconfig_values("IPHONEOS_DEPLOYMENT_TARGET")
    for where, value in targets.items():
        version = float(value["iOS"] if isinstance(value, dict) else value)
        for what, need in needs.items():
            assert version >= need, f"{where} is iOS {value}; {what} needs iOS {need}"
    assert coreml_deployment_target() >= 17  # W8A8 (int8 activations) exists from iOS 17 on


# ---- settings Gradle rejects, and the versions the app is built from ----

DEPENDENCY_CONFIGURATIONS = {"implementation", "api", "compileOnly", "runtimeOnly", "testImplementation",
                             "androidTestImplementation", "debugImplementation", "releaseImplementation", "kapt", "ksp"}


def catalog() -> dict:
    return tomllib.loads((ANDROID / "gradle/libs.versions.toml").read_text())


def accessor(alias: str) -> str:
    """Gradle's accessor for a catalog alias: `executorch-android` -> `executorch.android`."""
    return re.sub(r"[-_]", ".", alias)


def calls(node: Node):
    if node.type == "call_expression" and node.named_children and node.named_children[0].type == "identifier":
        args = node.named_children[1] if len(node.named_children) > 1 else None
        if args is not None and args.type == "value_arguments":
            yield node.named_children[0].text.decode(), [a.text.decode() for a in args.named_children], node.start_point[0] + 1
    for child in node.children:
        yield from calls(child)


def test_every_dependency_and_plugin_comes_pinned_from_the_version_catalog():
    cat = catalog()
    versions = cat["versions"]
    for table in ("libraries", "plugins"):
        for name, entry in cat[table].items():
            ref = entry.get("version", {}).get("ref") if isinstance(entry.get("version"), dict) else None
            assert ref in versions, f"{table}.{name} is not pinned through [versions]"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.\-]*", v) for v in versions.values()), "no dynamic versions (+, latest)"
    libraries = {f"libs.{accessor(a)}" for a in cat["libraries"]}
    plugins = {f"libs.plugins.{accessor(a)}" for a in cat["plugins"]}
    used = set()
    for script in sorted(ANDROID.rglob("*.gradle.kts")):
        text = script.read_text()
        assert not re.search(r'"[\w.\-]+:[\w.\-]+:[^"]+"', text), f"{script}: a dependency pinned outside the catalog"
        for name, args, line in calls(parse(script)):
            if name in DEPENDENCY_CONFIGURATIONS:
                assert len(args) == 1 and args[0] in libraries, f"{script}:{line}: {name}({', '.join(args)}) is not a catalog library"
                used.add(args[0])
            elif name == "alias":
                assert args[0] in plugins, f"{script}:{line}: alias({args[0]}) is not a catalog plugin"
            elif name == "id":
                pytest.fail(f"{script}:{line}: plugin id({args[0]}) outside the catalog")
    assert used == libraries, f"catalog libraries no build script uses: {sorted(libraries - used)}"


def sdk_levels() -> dict[str, int]:
    text = (ANDROID / "app/build.gradle.kts").read_text()
    levels = {}
    for key in ("compileSdk", "minSdk", "targetSdk"):
        found = re.findall(rf"^\s*{key}\s*=\s*(\d+)", text, re.M)
        assert len(found) == 1, f"app/build.gradle.kts sets {key} {len(found)} times"
        levels[key] = int(found[0])
    return levels


# Android API levels of the platform classes the app imports (the app must not run below them).
PLATFORM_API = {"android.graphics.ImageDecoder": 28}
# minSdk the libraries declare where we could read it here (the AAR itself, and so ExecuTorch's,
# is checked by Gradle's manifest merger on a machine with the SDK).
# LiteRT: Google's table of LiteRT Android releases says 23 for 2.3.0; Android's LiteRT guide for
# agents says the 2.3.0 AARs declare 24. The higher one.
LIBRARY_MIN_SDK = {"litert": 24}


def test_sdk_levels_are_consistent_and_cover_what_the_app_uses():
    levels = sdk_levels()
    assert levels["minSdk"] <= levels["targetSdk"] <= levels["compileSdk"], levels
    imports = {line.split()[1] for path in ANDROID.rglob("*.kt") for line in path.read_text().splitlines()
               if line.startswith("import ")}
    needs = {cls: api for cls, api in PLATFORM_API.items() if cls in imports}
    assert "android.graphics.ImageDecoder" in needs  # MainActivity decodes picked photos with it
    needs |= {f"{lib} {catalog()['versions'][lib]}": api for lib, api in LIBRARY_MIN_SDK.items()}
    for what, api in needs.items():
        assert levels["minSdk"] >= api, f"minSdk {levels['minSdk']} is below {what}'s API level {api}"


# ---- the runtime APIs the apps call, listed for a reviewer with the SDKs ----

def test_readme_lists_every_runtime_class_the_android_app_imports_with_its_version():
    readme = (DEMO / "README.md").read_text()
    api = readme.split("## Library APIs the apps call", 1)[1].split("\n## ", 1)[0]
    imported = {line.split()[1] for path in ANDROID.rglob("*.kt") for line in path.read_text().splitlines()
                if line.startswith(("import org.pytorch.executorch.", "import org.tensorflow.lite."))}
    assert {"org.pytorch.executorch.Module", "org.tensorflow.lite.Interpreter"} <= imported
    assert not {name for name in imported if f"`{name}`" not in api}, "runtime classes missing from the README's API list"
    cat = catalog()
    for alias in ("executorch-android", "litert"):
        lib = cat["libraries"][alias]
        assert f"{lib['group']}:{lib['name']}:{cat['versions'][lib['version']['ref']]}" in api
    branch = project()["packages"]["ExecuTorch"]["branch"]
    assert branch in api and "Module(filePath:)" in api
