"""docs/reference/grpc.md: the daemon's gRPC API, from the .proto files and their comments.

protoc (grpcio-tools) compiles proto/**/*.proto into a descriptor set with source
info, so every service, rpc, message, field, oneof and enum comes with the comments
written above it (leading) or after it on its line (trailing), exactly as protoc reads
them; nothing is parsed by hand. The files are the ones `e2edge proto --out DIR` hands
to clients in other languages.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from e2edge.reference.markdown import anchor, cell, code, generated_notice, prose, table

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
FieldProto = descriptor_pb2.FieldDescriptorProto

# descriptor.proto's field numbers, the path elements of SourceCodeInfo locations
_MESSAGE, _ENUM, _SERVICE, _SYNTAX = 4, 5, 6, 12  # in FileDescriptorProto
_FIELD, _NESTED, _NESTED_ENUM, _ONEOF = 2, 3, 4, 8  # in DescriptorProto
_VALUE, _METHOD = 2, 2  # in EnumDescriptorProto, ServiceDescriptorProto

_SCALARS = {
    FieldProto.TYPE_DOUBLE: "double", FieldProto.TYPE_FLOAT: "float",
    FieldProto.TYPE_INT64: "int64", FieldProto.TYPE_UINT64: "uint64",
    FieldProto.TYPE_INT32: "int32", FieldProto.TYPE_FIXED64: "fixed64",
    FieldProto.TYPE_FIXED32: "fixed32", FieldProto.TYPE_BOOL: "bool",
    FieldProto.TYPE_STRING: "string", FieldProto.TYPE_BYTES: "bytes",
    FieldProto.TYPE_UINT32: "uint32", FieldProto.TYPE_SFIXED32: "sfixed32",
    FieldProto.TYPE_SFIXED64: "sfixed64", FieldProto.TYPE_SINT32: "sint32",
    FieldProto.TYPE_SINT64: "sint64",
}


def proto_files() -> list[str]:
    """Every .proto under proto/, relative to it, in a stable order."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """protoc's view of proto/: descriptors with their comments."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        status = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                              "--include_source_info", f"--descriptor_set_out={out}",
                              *proto_files()])
        if status != 0:
            raise RuntimeError(f"protoc failed on {', '.join(proto_files())}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@dataclass(frozen=True)
class Comments:
    """The comments protoc attached to one element."""

    leading: str = ""
    trailing: str = ""
    detached: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Leading and trailing comment as one text (either may be empty)."""
        return "\n\n".join(part.strip() for part in (self.leading, self.trailing)
                           if part.strip())


class ProtoFile:
    """One .proto file's descriptor and its comments by element path."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto):
        self.proto = proto
        self.comments = {
            tuple(location.path): Comments(location.leading_comments,
                                           location.trailing_comments,
                                           tuple(location.leading_detached_comments))
            for location in proto.source_code_info.location
        }

    def at(self, *path: int) -> Comments:
        return self.comments.get(tuple(path), Comments())

    def messages(self) -> list[tuple[str, descriptor_pb2.DescriptorProto, tuple[int, ...]]]:
        """(dotted name, message, its path) of every message, nested ones after their
        parent, map entries left out (their fields are shown as map<K, V>)."""
        found: list[tuple[str, descriptor_pb2.DescriptorProto, tuple[int, ...]]] = []

        def walk(message, name: str, path: tuple[int, ...]) -> None:
            if message.options.map_entry:
                return
            found.append((name, message, path))
            for i, nested in enumerate(message.nested_type):
                walk(nested, f"{name}.{nested.name}", (*path, _NESTED, i))

        for i, message in enumerate(self.proto.message_type):
            walk(message, message.name, (_MESSAGE, i))
        return found

    def enums(self) -> list[tuple[str, descriptor_pb2.EnumDescriptorProto, tuple[int, ...]]]:
        found = [(e.name, e, (_ENUM, i)) for i, e in enumerate(self.proto.enum_type)]
        for name, message, path in self.messages():
            found += [(f"{name}.{e.name}", e, (*path, _NESTED_ENUM, i))
                      for i, e in enumerate(message.enum_type)]
        return found


class Api:
    """Every file, and where each message and enum is described (for links)."""

    def __init__(self, files: list[ProtoFile]):
        self.files = files
        self.anchors: dict[str, str] = {}  # ".package.Name" -> "#name"
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files:
            prefix = f".{file.proto.package}."
            for name in [m[0] for m in file.messages()] + [e[0] for e in file.enums()]:
                if anchor(name) in self.anchors.values():  # headings are short names
                    raise RuntimeError(f"two messages or enums are named {name}")
                self.anchors[prefix + name] = anchor(name)
            self._collect_map_entries(prefix, file.proto.message_type)

    def _collect_map_entries(self, prefix: str, messages) -> None:
        for message in messages:
            for nested in message.nested_type:
                if nested.options.map_entry:
                    self.map_entries[f"{prefix}{message.name}.{nested.name}"] = nested
            self._collect_map_entries(f"{prefix}{message.name}.", message.nested_type)

    def type_name(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        """`string`, `repeated TokenIds` (linked), `map<string, double>`, `optional ...`."""
        if field.type_name in self.map_entries:
            key, value = self.map_entries[field.type_name].field
            return f"map<{self.type_name(key)}, {self.type_name(value)}>"
        if field.type in _SCALARS:
            name = _SCALARS[field.type]
        else:
            name = self.link(field.type_name)
        if field.label == FieldProto.LABEL_REPEATED:
            return f"repeated {name}"
        if field.proto3_optional:
            return f"optional {name}"
        return name

    def link(self, type_name: str) -> str:
        """A message or enum type, linked to its description when this page has one."""
        short = type_name.rsplit(".", 1)[-1]
        if type_name in self.anchors:
            return f"[{short}]({self.anchors[type_name]})"
        return short


def _field_rows(api: Api, file: ProtoFile, message, path) -> list[list[str]]:
    rows = []
    for i, field in enumerate(message.field):
        kind = api.type_name(field)
        type_cell = cell(kind)
        if field.HasField("oneof_index") and not field.proto3_optional:
            type_cell += f" (oneof `{message.oneof_decl[field.oneof_index].name}`)"
        rows.append([code(field.name), str(field.number), type_cell,
                     cell(file.at(*path, _FIELD, i).text)])
    return rows


def _message_section(api: Api, file: ProtoFile, name: str, message, path) -> str:
    parts = [f"#### {name}"]
    comment = file.at(*path).text
    if comment:
        parts.append(prose(comment))
    for i, oneof in enumerate(message.oneof_decl):
        oneof_comment = file.at(*path, _ONEOF, i).text
        members = [f.name for f in message.field
                   if f.HasField("oneof_index") and f.oneof_index == i and not f.proto3_optional]
        if members:  # proto3 `optional` makes a synthetic oneof: not one a user writes
            parts.append(f"Oneof `{oneof.name}`: {', '.join(code(m) for m in members)}."
                         + (f" {prose(oneof_comment)}" if oneof_comment else ""))
    if message.field:
        parts.append(table(["field", "number", "type", "description"],
                           _field_rows(api, file, message, path)))
    else:
        parts.append("No fields.")
    return "\n\n".join(parts)


def _enum_section(file: ProtoFile, name: str, enum, path) -> str:
    parts = [f"#### {name}"]
    comment = file.at(*path).text
    if comment:
        parts.append(prose(comment))
    rows = [[code(value.name), str(value.number), cell(file.at(*path, _VALUE, i).text)]
            for i, value in enumerate(enum.value)]
    parts.append(table(["name", "number", "description"], rows))
    return "\n\n".join(parts)


def _service_section(api: Api, file: ProtoFile, index: int, service) -> str:
    full = f"{file.proto.package}.{service.name}"
    parts = [f"### Service {full}"]
    comment = file.at(_SERVICE, index).text
    if comment:
        parts.append(prose(comment))
    rows = []
    for i, method in enumerate(service.method):
        request = ("stream " if method.client_streaming else "") + api.link(method.input_type)
        response = ("stream " if method.server_streaming else "") + api.link(method.output_type)
        rows.append([code(method.name), request, response,
                     cell(file.at(_SERVICE, index, _METHOD, i).text)])
    parts.append(table(["rpc", "request", "response", "description"], rows))
    return "\n\n".join(parts)


def _file_section(api: Api, file: ProtoFile) -> str:
    proto = file.proto
    parts = [f"## {proto.name}", f"Package `{proto.package}`."]
    header = file.at(_SYNTAX)
    for text in (*header.detached, header.leading):
        if text.strip():
            parts.append(prose(text))
    parts += [_service_section(api, file, i, s) for i, s in enumerate(proto.service)]
    messages = file.messages()
    if messages:
        parts.append("### Messages")
        parts += [_message_section(api, file, *m) for m in messages]
    enums = file.enums()
    if enums:
        parts.append("### Enums")
        parts += [_enum_section(file, *e) for e in enums]
    return "\n\n".join(parts)


def undocumented(files: list[ProtoFile] | None = None) -> list[str]:
    """Elements of e2edge's own API (not the reproduced KServe file) without a comment."""
    files = files if files is not None else [ProtoFile(p) for p in descriptor_set().file]
    missing: list[str] = []
    for file in files:
        if not file.proto.package.startswith("e2edge"):
            continue
        for i, service in enumerate(file.proto.service):
            missing += [f"{service.name}.{m.name}" for j, m in enumerate(service.method)
                        if not file.at(_SERVICE, i, _METHOD, j).text]
        for name, message, path in file.messages():
            if not file.at(*path).text:
                missing.append(name)
            missing += [f"{name}.{f.name}" for j, f in enumerate(message.field)
                        if not file.at(*path, _FIELD, j).text]
        for name, _, path in file.enums():
            if not file.at(*path).text:
                missing.append(name)
    return missing


def render() -> str:
    files = [ProtoFile(p) for p in descriptor_set().file if p.name in set(proto_files())]
    api = Api(files)
    intro = (
        "# gRPC API reference\n\n"
        + prose(
            "The daemon's API, generated from the .proto files under proto/ and their "
            "comments. `e2edge proto --out DIR` writes the same files, as the installed "
            "package ships them, for generating clients in other languages (C++, ROS 2); "
            "Python clients use the stubs in runtime/proto or runtime.client.EdgeClient. "
            "Besides these services the daemon serves gRPC health checking "
            "(grpc.health.v1.Health: the service \"\" and one per model name) and server "
            "reflection (grpcurl lists and calls the services without the files).")
        + "\n\n" + table(["file", "package", "services"], [
            [f"[{f.proto.name}]({anchor(f.proto.name)})", code(f.proto.package),
             ", ".join(code(s.name) for s in f.proto.service)] for f in files])
    )
    return "\n\n".join([generated_notice("proto/**/*.proto"), intro,
                        *(_file_section(api, f) for f in files)]) + "\n"
