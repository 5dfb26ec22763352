package embed_test
import ("testing"; "context"; "github.com/snakepit-go/snakepit/embed"; _ "github.com/snakepit-go/snakepit/python/dist")
func TestSmoke(t *testing.T) {
	rt, err := embed.Default()
	if err != nil { t.Fatal(err) }
	t.Log(rt.Version().Full, rt.Python())
	ctx := context.Background()
	v, err := rt.Main().Eval(ctx, "[1, 'a', None, {'k': 2.5}, b'x', 2**40]")
	t.Log(v, err)
	in, err := rt.NewInterpreter(embed.InterpreterConfig{})
	if err != nil { t.Fatal(err) }
	t.Log(in.ID(), in.OwnGIL())
	t.Log(in.Eval(ctx, "__import__('sys').executable"))
	t.Log(in.Exec(ctx, "def f(x, y=1):\n  return {'sum': x+y}\n"))
	t.Log(in.Call(ctx, "__main__", "f", []any{1}, map[string]any{"y": 5}))
	t.Log(in.Eval(ctx, "1/0"))
	t.Log(in.Eval(ctx, "__import__('datetime').datetime.now()"))
	t.Log(in.Eval(ctx, "{1,2}"))
	t.Log(in.Import(ctx, "_testsinglephase"))
	th, err := in.Attach()
	if err != nil { t.Fatal(err) }
	f, _ := th.Func("__main__", "f")
	t.Log(th.Call(f, []any{2}, nil))
	th.Close()
	t.Log(in.Close(ctx))
}
