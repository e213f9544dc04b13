// The guest's JSON parser and the configuration read from the command line.
import Testing

@testable import BareMetalKit

func parse(_ text: String) throws(JSONError) -> JSONValue {
    try JSONParser.parseDocument(Array(text.utf8))
}

@Test func valuesOfEveryKindParse() throws {
    let value = try parse(#" { "a" : [1, -2.5e3, true, false, null], "b": {"c": "d"}, "e": [] } "#)
    #expect(value["a"] == .array([.number("1"), .number("-2.5e3"), .bool(true), .bool(false), .null]))
    #expect(value["b"]?["c"] == .string("d"))
    #expect(value["e"] == .array([]))
    #expect(value["missing"] == nil)
}

@Test func stringEscapesDecode() throws {
    #expect(try parse(#""a\"b\\c\/d\n\t\u0041\u00e9\u20ac\ud83d\ude00""#) == .string("a\"b\\c/d\n\tAé€😀"))
}

@Test func integersConvertWithOverflowChecks() throws {
    #expect(try parse("42").integer == 42)
    #expect(try parse("-7").integer == -7)
    #expect(try parse("1.5").integer == nil)
    #expect(try parse("99999999999999999999").integer == nil)
}

@Test(arguments: [
    ("{", JSONError(reason: .unexpectedEnd, offset: 1)),
    ("[1,]", JSONError(reason: .unexpectedByte(UInt8(ascii: "]")), offset: 3)),
    ("{\"a\" 1}", JSONError(reason: .unexpectedByte(UInt8(ascii: "1")), offset: 5)),
    ("\"\\x\"", JSONError(reason: .badEscape, offset: 2)),
    ("\"\\ud800x\"", JSONError(reason: .unexpectedByte(UInt8(ascii: "x")), offset: 7)),
    ("\"a\nb\"", JSONError(reason: .controlCharacterInString, offset: 2)),
    ("01", JSONError(reason: .badNumber, offset: 0)),
    ("1.", JSONError(reason: .badNumber, offset: 2)),
    ("tru", JSONError(reason: .unexpectedEnd, offset: 3)),
    ("[] x", JSONError(reason: .unexpectedByte(UInt8(ascii: "x")), offset: 3)),
])
func malformedDocumentsAreRejectedWithOffsets(text: String, expected: JSONError) {
    #expect(throws: expected) { try parse(text) }
}

@Test func nestingIsBounded() {
    let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
    #expect(throws: JSONError(reason: .nestingTooDeep, offset: 32)) { try parse(deep) }
}

@Test func configurationIsReadFromTheCommandLine() throws {
    let line = #"/path/kernel.img {"argv":["hello","7"],"env":["A=1","GREETING=hi","A=2"],"hostname":"box","extra":{}} virtio_mmio.device=1"#
    let configuration = try GuestConfiguration(commandLine: Array(line.utf8))
    #expect(configuration.arguments == ["hello", "7"])
    #expect(configuration.environment == ["A=1", "GREETING=hi", "A=2"])
    #expect(configuration.environmentValue("A") == "2")
    #expect(configuration.environmentValue("GREETING") == "hi")
    #expect(configuration.environmentValue("GREET") == nil)
    #expect(configuration.hostname == "box")
    #expect(configuration.json["extra"] == .object([]))
    #expect(String(decoding: configuration.extraCommandLine, as: UTF8.self) == "/path/kernel.img  virtio_mmio.device=1")
}

@Test func commandLineWithoutJSONGivesDefaults() throws {
    let configuration = try GuestConfiguration(commandLine: Array("console=ttyS0".utf8))
    #expect(configuration.arguments.isEmpty)
    #expect(configuration.hostname == "rumprun")
}

@Test func badConfigurationsAreRejected() {
    #expect(throws: GuestConfiguration.Error.wrongType(key: "argv")) {
        try GuestConfiguration(commandLine: Array(#"{"argv":"hello"}"#.utf8))
    }
    #expect(throws: GuestConfiguration.Error.wrongType(key: "env")) {
        try GuestConfiguration(commandLine: Array(#"{"env":[1]}"#.utf8))
    }
    #expect(throws: GuestConfiguration.Error.malformedJSON(JSONError(reason: .unexpectedEnd, offset: 9))) {
        try GuestConfiguration(commandLine: Array(#"{"argv":["#.utf8))
    }
}
