package pymarshal

import (
	"reflect"
	"strings"
	"sync"
)

// field is one dict key of a struct, following encoding/json's rules.
type field struct {
	name      string
	key       []byte // name encoded as a str; nil when it cannot be (bad UTF-8)
	index     []int
	omitEmpty bool
}

// fieldCache holds the fields of each struct type seen, resolved once: the
// encoder's and the typed decoder's plans for the type.
var fieldCache sync.Map // reflect.Type -> []field

func cachedFields(t reflect.Type) []field {
	if f, ok := fieldCache.Load(t); ok {
		return f.([]field)
	}
	fs := typeFields(t)
	for i := range fs {
		if k, err := AppendString(nil, fs[i].name); err == nil {
			fs[i].key = k
		}
	}
	f, _ := fieldCache.LoadOrStore(t, fs)
	return f.([]field)
}

// typeFields lists the exported fields of t, flattening embedded structs.
// As in encoding/json, a name defined at a shallower depth wins, and a name
// that is ambiguous at its shallowest depth is dropped.
func typeFields(t reflect.Type) []field {
	type entry struct {
		f      field
		depth  int
		tagged bool
	}
	var all []entry
	var walk func(t reflect.Type, index []int, depth int, seen map[reflect.Type]bool)
	walk = func(t reflect.Type, index []int, depth int, seen map[reflect.Type]bool) {
		if seen[t] {
			return
		}
		seen[t] = true
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), index...), i)
			ft := sf.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if sf.Anonymous && name == "" && ft.Kind() == reflect.Struct {
				walk(ft, idx, depth+1, seen)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			tagged := name != ""
			if !tagged {
				name = sf.Name
			}
			all = append(all, entry{
				f:      field{name: name, index: idx, omitEmpty: strings.Contains(","+opts+",", ",omitempty,")},
				depth:  depth,
				tagged: tagged,
			})
		}
		delete(seen, t)
	}
	walk(t, nil, 0, map[reflect.Type]bool{})

	byName := map[string][]entry{}
	var order []string
	for _, e := range all {
		if _, ok := byName[e.f.name]; !ok {
			order = append(order, e.f.name)
		}
		byName[e.f.name] = append(byName[e.f.name], e)
	}
	var out []field
	for _, name := range order {
		es := byName[name]
		best, n := es[0], 0
		for _, e := range es {
			switch {
			case e.depth < best.depth || (e.depth == best.depth && e.tagged && !best.tagged):
				best, n = e, 1
			case e.depth == best.depth && e.tagged == best.tagged:
				n++
			}
		}
		if n == 1 || len(es) == 1 {
			out = append(out, best.f)
		}
	}
	return out
}
