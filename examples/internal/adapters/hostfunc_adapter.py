"""The hostfunc example's adapter: a recommender that asks the Go service
for data it does not have (ctx.host)."""

import snakepit


@snakepit.command
def recommend(ctx, user_id, k=3):
    """Rank the catalogue for a user by what they bought before."""
    history = ctx.host.purchases(user_id=user_id)  # a Go function
    try:
        stock = ctx.host.call("stock", skus=[p["sku"] for p in history])
    except snakepit.HostError as e:
        ctx.log.warning("no stock levels: %s", e)
        stock = {}
    seen = {p["category"] for p in history}
    ranked = sorted(
        (p for p in history if stock.get(p["sku"], 0) > 0),
        key=lambda p: (p["category"] not in seen, -p["rating"]),
    )
    return {"user_id": user_id, "skus": [p["sku"] for p in ranked[:k]], "host": ctx.host.names()}
