package pickle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits against hostile input. Real values (a breaker flag is about 100 bytes) are far below them.
const (
	// MaxInputBytes is the largest pickle Decode accepts.
	MaxInputBytes = 1 << 20
	// MaxIntBytes bounds the size of one integer (LONG1/LONG4 bytes, or LONG digits): big integer
	// arithmetic is superlinear, and no flag needs a 8000-bit number.
	MaxIntBytes = 1024
	// maxKeyDepth bounds the nesting of tuples used as dict keys or set members.
	maxKeyDepth = 64
)

// ErrTruncated is returned (wrapped in a *FormatError) when the stream ends before STOP.
var ErrTruncated = errors.New("truncated pickle")

// UnsafeError is returned for an opcode that would import, call or look up Python code. The
// decoder stops there: nothing is executed.
type UnsafeError struct {
	Opcode string // opcode name, e.g. "GLOBAL", "STACK_GLOBAL", "REDUCE"
	Global string // "module.name" when the stream names one (GLOBAL, STACK_GLOBAL, INST)
	Offset int    // byte offset of the opcode
}

func (e *UnsafeError) Error() string {
	if e.Global != "" {
		return fmt.Sprintf("pickle: refused %s %s at offset %d: only data is decoded, no code", e.Opcode, e.Global, e.Offset)
	}
	return fmt.Sprintf("pickle: refused %s at offset %d: only data is decoded, no code", e.Opcode, e.Offset)
}

// FormatError is returned for a stream that is not a valid data pickle (truncated, bad opcode,
// stack underflow, over a limit).
type FormatError struct {
	Offset int
	Err    error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("pickle: invalid at offset %d: %v", e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// IsUnsafe reports whether err (or an error it wraps) is an *UnsafeError.
func IsUnsafe(err error) bool {
	var u *UnsafeError
	return errors.As(err, &u)
}

// Decode decodes one pickle from data. Bytes after STOP are ignored, as Python's pickle.loads does.
func Decode(data []byte) (any, error) {
	if len(data) > MaxInputBytes {
		return nil, &FormatError{Offset: 0, Err: fmt.Errorf("%d bytes exceeds the limit of %d", len(data), MaxInputBytes)}
	}
	d := &decoder{
		data: data,
		memo: map[uint64]any{},
		// Hashing dict keys is the only work not proportional to one pass over the input (a key
		// may be a long string met many times through the memo); cap it.
		budget:  16*len(data) + 1<<16,
		keyOf:   map[*any]string{},
		setKey:  map[*Set]string{},
		interns: map[string]int{},
	}
	return d.run()
}

type decoder struct {
	data   []byte
	pos    int
	op     int // offset of the current opcode
	stack  []any
	marks  []int // stack lengths at each MARK
	memo   map[uint64]any
	budget int

	keyOf   map[*any]string // hash key of a non-empty tuple, by its first element's address
	setKey  map[*Set]string
	interns map[string]int
}

func (d *decoder) fail(format string, args ...any) error {
	return &FormatError{Offset: d.op, Err: fmt.Errorf(format, args...)}
}

func (d *decoder) unsafe(opcode, global string) error {
	return &UnsafeError{Opcode: opcode, Global: global, Offset: d.op}
}

func (d *decoder) read(n uint64) ([]byte, error) {
	if n > uint64(len(d.data)-d.pos) {
		return nil, &FormatError{Offset: d.op, Err: ErrTruncated}
	}
	b := d.data[d.pos : d.pos+int(n)]
	d.pos += int(n)
	return b, nil
}

func (d *decoder) readByte() (byte, error) {
	b, err := d.read(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (d *decoder) readUint(n int) (uint64, error) {
	b, err := d.read(uint64(n))
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

// memoIndex reads the memo index of a PUT or GET: decimal text in protocol 0, one byte in the
// BIN forms, four in the LONG_BIN forms.
func (d *decoder) memoIndex(code byte) (uint64, error) {
	switch code {
	case opBINPUT, opBINGET:
		return d.readUint(1)
	case opLONG_BINPUT, opLONG_BINGET:
		return d.readUint(4)
	}
	line, err := d.readLine()
	if err != nil {
		return 0, err
	}
	idx, err := strconv.ParseUint(string(line), 10, 64)
	if err != nil {
		return 0, d.fail("memo index: %v", err)
	}
	return idx, nil
}

// readLine reads up to and excluding the next '\n' (the text opcodes of protocol 0).
func (d *decoder) readLine() ([]byte, error) {
	i := bytes.IndexByte(d.data[d.pos:], '\n')
	if i < 0 {
		return nil, &FormatError{Offset: d.op, Err: ErrTruncated}
	}
	b := d.data[d.pos : d.pos+i]
	d.pos += i + 1
	return b, nil
}

func (d *decoder) push(v any) { d.stack = append(d.stack, v) }

// aboveMark is how many items an opcode may take: those pushed since the last MARK (the whole
// stack when there is none), as Python's unpickler keeps each MARK's items on a stack of their own.
func (d *decoder) aboveMark() int {
	if len(d.marks) == 0 {
		return len(d.stack)
	}
	return len(d.stack) - d.marks[len(d.marks)-1]
}

func (d *decoder) pop() (any, error) {
	v, err := d.top()
	if err != nil {
		return nil, err
	}
	d.stack = d.stack[:len(d.stack)-1]
	return v, nil
}

func (d *decoder) top() (any, error) {
	if d.aboveMark() == 0 {
		return nil, d.fail("stack underflow")
	}
	return d.stack[len(d.stack)-1], nil
}

// popMark returns the items pushed since the last MARK (a copy) and drops them and the mark.
func (d *decoder) popMark() ([]any, error) {
	if len(d.marks) == 0 {
		return nil, d.fail("no MARK on the stack")
	}
	m := d.marks[len(d.marks)-1]
	d.marks = d.marks[:len(d.marks)-1]
	items := make([]any, len(d.stack)-m)
	copy(items, d.stack[m:])
	clear(d.stack[m:]) // let the garbage collector have them
	d.stack = d.stack[:m]
	return items, nil
}

func (d *decoder) run() (any, error) {
	for {
		d.op = d.pos
		code, err := d.readByte()
		if err != nil {
			return nil, err
		}
		if code == opSTOP {
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			return v, nil
		}
		if err := d.step(code); err != nil {
			return nil, err
		}
	}
}

// Opcodes, from CPython's Lib/pickle.py.
const (
	opMARK            = '('
	opSTOP            = '.'
	opPOP             = '0'
	opPOP_MARK        = '1'
	opDUP             = '2'
	opFLOAT           = 'F'
	opINT             = 'I'
	opBININT          = 'J'
	opBININT1         = 'K'
	opLONG            = 'L'
	opBININT2         = 'M'
	opNONE            = 'N'
	opPERSID          = 'P'
	opBINPERSID       = 'Q'
	opREDUCE          = 'R'
	opSTRING          = 'S'
	opBINSTRING       = 'T'
	opSHORT_BINSTRING = 'U'
	opUNICODE         = 'V'
	opBINUNICODE      = 'X'
	opAPPEND          = 'a'
	opBUILD           = 'b'
	opGLOBAL          = 'c'
	opDICT            = 'd'
	opEMPTY_DICT      = '}'
	opAPPENDS         = 'e'
	opGET             = 'g'
	opBINGET          = 'h'
	opINST            = 'i'
	opLONG_BINGET     = 'j'
	opLIST            = 'l'
	opEMPTY_LIST      = ']'
	opOBJ             = 'o'
	opPUT             = 'p'
	opBINPUT          = 'q'
	opLONG_BINPUT     = 'r'
	opSETITEM         = 's'
	opTUPLE           = 't'
	opEMPTY_TUPLE     = ')'
	opSETITEMS        = 'u'
	opBINFLOAT        = 'G'

	opPROTO    = 0x80
	opNEWOBJ   = 0x81
	opEXT1     = 0x82
	opEXT2     = 0x83
	opEXT4     = 0x84
	opTUPLE1   = 0x85
	opTUPLE2   = 0x86
	opTUPLE3   = 0x87
	opNEWTRUE  = 0x88
	opNEWFALSE = 0x89
	opLONG1    = 0x8a
	opLONG4    = 0x8b

	opBINBYTES       = 'B'
	opSHORT_BINBYTES = 'C'

	opSHORT_BINUNICODE = 0x8c
	opBINUNICODE8      = 0x8d
	opBINBYTES8        = 0x8e
	opEMPTY_SET        = 0x8f
	opADDITEMS         = 0x90
	opFROZENSET        = 0x91
	opNEWOBJ_EX        = 0x92
	opSTACK_GLOBAL     = 0x93
	opMEMOIZE          = 0x94
	opFRAME            = 0x95

	opBYTEARRAY8      = 0x96
	opNEXT_BUFFER     = 0x97
	opREADONLY_BUFFER = 0x98
)

// HighestProtocol is the newest protocol this decoder knows (Python 3.8+'s).
const HighestProtocol = 5

func (d *decoder) step(code byte) error {
	switch code {
	case opPROTO:
		v, err := d.readByte()
		if err != nil {
			return err
		}
		if v > HighestProtocol {
			return d.fail("unsupported pickle protocol %d", v)
		}
	case opFRAME:
		// Frames only tell a reader how much to buffer; the whole value is in memory already.
		n, err := d.readUint(8)
		if err != nil {
			return err
		}
		if n > uint64(len(d.data)-d.pos) {
			return &FormatError{Offset: d.op, Err: ErrTruncated}
		}

	case opMARK:
		d.marks = append(d.marks, len(d.stack))
	case opPOP:
		if len(d.marks) > 0 && d.aboveMark() == 0 {
			// Python's POP discards a MARK when that is what is on top.
			d.marks = d.marks[:len(d.marks)-1]
			return nil
		}
		_, err := d.pop()
		return err
	case opPOP_MARK:
		_, err := d.popMark()
		return err
	case opDUP:
		v, err := d.top()
		if err != nil {
			return err
		}
		d.push(v)

	case opNONE:
		d.push(nil)
	case opNEWTRUE:
		d.push(true)
	case opNEWFALSE:
		d.push(false)
	case opINT:
		line, err := d.readLine()
		if err != nil {
			return err
		}
		// Protocol 0 spells booleans as INT 01 / INT 00.
		switch string(line) {
		case "01":
			d.push(true)
			return nil
		case "00":
			d.push(false)
			return nil
		}
		return d.pushDecimal(line)
	case opLONG:
		line, err := d.readLine()
		if err != nil {
			return err
		}
		return d.pushDecimal(bytes.TrimSuffix(line, []byte("L")))
	case opBININT:
		v, err := d.readUint(4)
		if err != nil {
			return err
		}
		d.push(int64(int32(uint32(v))))
	case opBININT1:
		v, err := d.readUint(1)
		if err != nil {
			return err
		}
		d.push(int64(v))
	case opBININT2:
		v, err := d.readUint(2)
		if err != nil {
			return err
		}
		d.push(int64(v))
	case opLONG1, opLONG4:
		size := 1
		if code == opLONG4 {
			size = 4
		}
		n, err := d.readUint(size)
		if err != nil {
			return err
		}
		if code == opLONG4 && int32(uint32(n)) < 0 {
			return d.fail("LONG4 with negative length")
		}
		if n > MaxIntBytes {
			return d.fail("integer of %d bytes exceeds the limit of %d", n, MaxIntBytes)
		}
		b, err := d.read(n)
		if err != nil {
			return err
		}
		d.push(decodeLong(b))
	case opFLOAT:
		line, err := d.readLine()
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(string(line), 64)
		if err != nil {
			return d.fail("FLOAT: %v", err)
		}
		d.push(f)
	case opBINFLOAT:
		v, err := d.read(8)
		if err != nil {
			return err
		}
		d.push(math.Float64frombits(binary.BigEndian.Uint64(v)))

	case opSHORT_BINUNICODE, opBINUNICODE, opBINUNICODE8:
		b, err := d.readSized(code, lengthSize(code))
		if err != nil {
			return err
		}
		if !utf8.Valid(b) && !validSurrogateEscapes(b) {
			return d.fail("str is not valid UTF-8")
		}
		d.push(string(b))
	case opUNICODE:
		line, err := d.readLine()
		if err != nil {
			return err
		}
		s, err := rawUnicodeEscape(line)
		if err != nil {
			return d.fail("UNICODE: %v", err)
		}
		d.push(s)
	case opSHORT_BINSTRING, opBINSTRING:
		// Python 2 str: Python 3 decodes it with encoding="ASCII" by default; keep the bytes as a
		// Go string so a Python 2-era value still reads.
		b, err := d.readSized(code, lengthSize(code))
		if err != nil {
			return err
		}
		d.push(string(b))
	case opSTRING:
		line, err := d.readLine()
		if err != nil {
			return err
		}
		s, err := pythonStringLiteral(line)
		if err != nil {
			return d.fail("STRING: %v", err)
		}
		d.push(s)
	case opSHORT_BINBYTES, opBINBYTES, opBINBYTES8:
		b, err := d.readSized(code, lengthSize(code))
		if err != nil {
			return err
		}
		d.push(bytes.Clone(b))
	case opBYTEARRAY8:
		b, err := d.readSized(code, 8)
		if err != nil {
			return err
		}
		d.push(ByteArray(bytes.Clone(b)))
	case opNEXT_BUFFER:
		// Out-of-band buffers are handed to pickle.loads by the caller; a value read from Redis
		// never has them, so a stream asking for one is not something we can decode.
		return d.fail("NEXT_BUFFER: out-of-band buffers are not supported")
	case opREADONLY_BUFFER:
		return d.fail("READONLY_BUFFER: out-of-band buffers are not supported")

	case opEMPTY_TUPLE:
		d.push(Tuple{})
	case opTUPLE1, opTUPLE2, opTUPLE3:
		n := int(code-opTUPLE1) + 1
		if d.aboveMark() < n {
			return d.fail("stack underflow")
		}
		t := make(Tuple, n)
		copy(t, d.stack[len(d.stack)-n:])
		d.stack = d.stack[:len(d.stack)-n]
		d.push(t)
	case opTUPLE:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		d.push(Tuple(items))
	case opEMPTY_LIST:
		d.push(&List{})
	case opLIST:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		d.push(&List{Items: items})
	case opAPPEND:
		v, err := d.pop()
		if err != nil {
			return err
		}
		return d.appendTo([]any{v})
	case opAPPENDS:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.appendTo(items)
	case opEMPTY_DICT:
		d.push(&Dict{})
	case opDICT:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		dict := &Dict{}
		if err := d.setItems(dict, items); err != nil {
			return err
		}
		d.push(dict)
	case opSETITEM:
		v, err := d.pop()
		if err != nil {
			return err
		}
		k, err := d.pop()
		if err != nil {
			return err
		}
		return d.setItemsOnTop([]any{k, v})
	case opSETITEMS:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.setItemsOnTop(items)
	case opEMPTY_SET:
		d.push(&Set{})
	case opADDITEMS:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		top, err := d.top()
		if err != nil {
			return err
		}
		set, ok := top.(*Set)
		if !ok || set.Frozen {
			return d.fail("ADDITEMS to a %s", typeName(top))
		}
		return d.addAll(set, items)
	case opFROZENSET:
		items, err := d.popMark()
		if err != nil {
			return err
		}
		set := &Set{Frozen: true}
		if err := d.addAll(set, items); err != nil {
			return err
		}
		d.push(set)

	case opPUT, opBINPUT, opLONG_BINPUT:
		idx, err := d.memoIndex(code)
		if err != nil {
			return err
		}
		return d.put(idx)
	case opMEMOIZE:
		return d.put(uint64(len(d.memo)))
	case opGET, opBINGET, opLONG_BINGET:
		idx, err := d.memoIndex(code)
		if err != nil {
			return err
		}
		return d.get(idx)

	// Everything below names or calls Python code: refused, never looked up.
	case opGLOBAL:
		module, err := d.readLine()
		if err != nil {
			return err
		}
		name, err := d.readLine()
		if err != nil {
			return err
		}
		return d.unsafe("GLOBAL", printable(string(module))+"."+printable(string(name)))
	case opINST:
		module, err := d.readLine()
		if err != nil {
			return err
		}
		name, err := d.readLine()
		if err != nil {
			return err
		}
		return d.unsafe("INST", printable(string(module))+"."+printable(string(name)))
	case opSTACK_GLOBAL:
		global := ""
		if n := len(d.stack); n >= 2 {
			module, ok1 := d.stack[n-2].(string)
			name, ok2 := d.stack[n-1].(string)
			if ok1 && ok2 {
				global = printable(module) + "." + printable(name)
			}
		}
		return d.unsafe("STACK_GLOBAL", global)

	default:
		if name, ok := callOpcodes[code]; ok {
			return d.unsafe(name, "")
		}
		return d.fail("unknown opcode 0x%02x", code)
	}
	return nil
}

// callOpcodes call or look up Python code without naming it on the wire: refused as they come.
var callOpcodes = map[byte]string{
	opREDUCE: "REDUCE", opBUILD: "BUILD", opOBJ: "OBJ", opNEWOBJ: "NEWOBJ", opNEWOBJ_EX: "NEWOBJ_EX",
	opEXT1: "EXT1", opEXT2: "EXT2", opEXT4: "EXT4", opPERSID: "PERSID", opBINPERSID: "BINPERSID",
}

// lengthSize is how many bytes hold the length of a sized opcode's argument.
func lengthSize(code byte) int {
	switch code {
	case opSHORT_BINUNICODE, opSHORT_BINSTRING, opSHORT_BINBYTES:
		return 1
	case opBINUNICODE8, opBINBYTES8, opBYTEARRAY8:
		return 8
	default:
		return 4
	}
}

// readSized reads a length (size bytes, little-endian) and that many bytes.
func (d *decoder) readSized(code byte, size int) ([]byte, error) {
	n, err := d.readUint(size)
	if err != nil {
		return nil, err
	}
	if (code == opBINSTRING) && int32(uint32(n)) < 0 {
		return nil, d.fail("BINSTRING with negative length")
	}
	return d.read(n)
}

func (d *decoder) pushDecimal(digits []byte) error {
	if len(digits) > 2*MaxIntBytes+2 {
		return d.fail("integer of %d digits exceeds the limit", len(digits))
	}
	s := string(digits)
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		d.push(v)
		return nil
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return d.fail("invalid integer %q", printable(s))
	}
	d.push(n)
	return nil
}

// decodeLong decodes a little-endian two's complement integer (LONG1/LONG4).
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var v uint64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		shift := uint(64 - 8*len(b))
		return int64(v<<shift) >> shift // sign-extend
	}
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	n := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	if n.IsInt64() {
		return n.Int64()
	}
	return n
}

func (d *decoder) put(idx uint64) error {
	v, err := d.top()
	if err != nil {
		return err
	}
	d.memo[idx] = v
	return nil
}

func (d *decoder) get(idx uint64) error {
	v, ok := d.memo[idx]
	if !ok {
		return d.fail("memo key %d not found", idx)
	}
	d.push(v)
	return nil
}

func (d *decoder) appendTo(items []any) error {
	top, err := d.top()
	if err != nil {
		return err
	}
	l, ok := top.(*List)
	if !ok {
		return d.fail("APPEND to a %s", typeName(top))
	}
	l.Items = append(l.Items, items...)
	return nil
}

func (d *decoder) setItemsOnTop(items []any) error {
	top, err := d.top()
	if err != nil {
		return err
	}
	dict, ok := top.(*Dict)
	if !ok {
		return d.fail("SETITEM on a %s", typeName(top))
	}
	return d.setItems(dict, items)
}

func (d *decoder) setItems(dict *Dict, items []any) error {
	if len(items)%2 != 0 {
		return d.fail("odd number of items for a dict")
	}
	for i := 0; i < len(items); i += 2 {
		k, err := d.hashKey(items[i], 0)
		if err != nil {
			return err
		}
		dict.set(k, items[i], items[i+1])
	}
	return nil
}

func (d *decoder) addAll(set *Set, items []any) error {
	for _, item := range items {
		k, err := d.hashKey(item, 0)
		if err != nil {
			return err
		}
		set.add(k, item)
	}
	return nil
}

func (d *decoder) spend(n int) error {
	d.budget -= n
	if d.budget < 0 {
		return d.fail("too much work hashing dict keys")
	}
	return nil
}

// intern gives a composite key a short stable name, so a tuple's key stays as short as the tuple
// even when it nests other tuples (otherwise ((a,a),(a,a))… would grow exponentially).
func (d *decoder) intern(k string) string {
	id, ok := d.interns[k]
	if !ok {
		id = len(d.interns)
		d.interns[k] = id
	}
	return "#" + strconv.Itoa(id)
}

// hashKey maps a hashable value to a string such that values Python considers equal as dict keys
// get the same string (1 == 1.0 == True). Mutable containers are unhashable, as in Python.
func (d *decoder) hashKey(v any, depth int) (string, error) {
	if depth > maxKeyDepth {
		return "", d.fail("dict key nested deeper than %d", maxKeyDepth)
	}
	switch v := v.(type) {
	case nil:
		return "N", nil
	case string:
		if err := d.spend(len(v)); err != nil {
			return "", err
		}
		return strKey(v), nil
	case bool:
		if v {
			return "i1", nil
		}
		return "i0", nil
	case int64:
		return "i" + strconv.FormatInt(v, 10), nil
	case *big.Int:
		if err := d.spend(v.BitLen() / 8); err != nil {
			return "", err
		}
		return "i" + v.String(), nil
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<63 {
			return "i" + strconv.FormatInt(int64(v), 10), nil
		}
		return "f" + strconv.FormatFloat(v, 'g', -1, 64), nil
	case []byte:
		if err := d.spend(len(v)); err != nil {
			return "", err
		}
		return "b" + string(v), nil
	case Tuple:
		if len(v) == 0 {
			return "t()", nil
		}
		if k, ok := d.keyOf[&v[0]]; ok {
			return k, nil
		}
		if err := d.spend(len(v)); err != nil {
			return "", err
		}
		var b strings.Builder
		b.WriteString("t(")
		for _, item := range v {
			k, err := d.hashKey(item, depth+1)
			if err != nil {
				return "", err
			}
			b.WriteString(d.intern(k))
		}
		b.WriteByte(')')
		k := d.intern(b.String())
		d.keyOf[&v[0]] = k
		return k, nil
	case *Set:
		if !v.Frozen {
			return "", d.fail("unhashable type: 'set'")
		}
		if k, ok := d.setKey[v]; ok {
			return k, nil
		}
		if err := d.spend(len(v.Items)); err != nil {
			return "", err
		}
		keys := make([]string, 0, len(v.Items))
		for _, item := range v.Items {
			k, err := d.hashKey(item, depth+1)
			if err != nil {
				return "", err
			}
			keys = append(keys, d.intern(k))
		}
		// A frozenset's key must not depend on insertion order.
		sort.Strings(keys)
		k := d.intern("F(" + strings.Join(keys, "") + ")")
		d.setKey[v] = k
		return k, nil
	default:
		return "", d.fail("unhashable type: '%s'", typeName(v))
	}
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case int64, *big.Int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case ByteArray:
		return "bytearray"
	case Tuple:
		return "tuple"
	case *List:
		return "list"
	case *Dict:
		return "dict"
	case *Set:
		return "set"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// printable bounds and quotes what a hostile stream names, for error messages and logs.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// validSurrogateEscapes accepts the UTF-8 that Python writes for lone surrogates
// ("surrogatepass"), which Go's utf8.Valid rejects; such strings keep their bytes as they are.
func validSurrogateEscapes(b []byte) bool {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			if len(b) >= 3 && b[0] == 0xed && b[1] >= 0xa0 && b[1] <= 0xbf && b[2]&0xc0 == 0x80 {
				b = b[3:]
				continue
			}
			return false
		}
		b = b[size:]
	}
	return true
}

// rawUnicodeEscape decodes Python's raw-unicode-escape (protocol 0 UNICODE): bytes are Latin-1,
// except \uXXXX and \UXXXXXXXX.
func rawUnicodeEscape(b []byte) (string, error) {
	var out strings.Builder
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '\\' && i+1 < len(b) && (b[i+1] == 'u' || b[i+1] == 'U') {
			// An odd run of backslashes escapes; \\u is not produced by Python's encoder, which
			// writes a backslash as \u005c.
			n := 4
			if b[i+1] == 'U' {
				n = 8
			}
			if i+2+n > len(b) {
				return "", errors.New("truncated \\u escape")
			}
			v, err := strconv.ParseUint(string(b[i+2:i+2+n]), 16, 32)
			if err != nil || v > utf8.MaxRune {
				return "", fmt.Errorf("bad escape %q", b[i:i+2+n])
			}
			out.WriteRune(rune(v))
			i += 1 + n
			continue
		}
		out.WriteRune(rune(c))
	}
	return out.String(), nil
}

// pythonStringLiteral decodes protocol 0 STRING: a quoted Python 2 str literal with backslash
// escapes.
func pythonStringLiteral(b []byte) (string, error) {
	if len(b) < 2 || (b[0] != '\'' && b[0] != '"') || b[len(b)-1] != b[0] {
		return "", errors.New("the STRING opcode argument must be quoted")
	}
	b = b[1 : len(b)-1]
	var out []byte
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(b) {
			return "", errors.New("trailing backslash")
		}
		switch e := b[i]; e {
		case '\n':
		case '\\', '\'', '"':
			out = append(out, e)
		case 'a':
			out = append(out, '\a')
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			if i+3 > len(b) {
				return "", errors.New("truncated \\x escape")
			}
			v, err := strconv.ParseUint(string(b[i+1:i+3]), 16, 8)
			if err != nil {
				return "", fmt.Errorf("bad \\x escape %q", b[i-1:i+3])
			}
			out = append(out, byte(v))
			i += 2
		default:
			if e >= '0' && e <= '7' {
				v := 0
				j := i
				for ; j < len(b) && j < i+3 && b[j] >= '0' && b[j] <= '7'; j++ {
					v = v*8 + int(b[j]-'0')
				}
				out = append(out, byte(v))
				i = j - 1
				continue
			}
			out = append(out, '\\', e)
		}
	}
	return string(out), nil
}
