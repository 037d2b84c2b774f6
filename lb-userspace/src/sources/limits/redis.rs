//! The one exchange with Redis a renewal makes, for every global limit at once: this node's
//! demand goes in (stamped with the server's clock, so the nodes' clocks do not matter), every
//! live node's demand comes back; nodes silent for longer than `stale` are dropped.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// KEYS: one hash per limit (field: node, value: `demand:stamp[:held]`). ARGV: the node, how
/// long a node stays live without renewing (ms), then per key this node's offer: its demand
/// (thousandths of a request per second, so that Lua's numbers stay integers), and for a
/// concurrency limit `:holding:threshold`.
///
/// A concurrency limit's slots are granted here, atomically. The threshold is divided over the
/// live nodes by demand — one slot each first while there are enough (traffic starting on an
/// idle node is admitted at once), the rest in proportion by largest remainder, ties by name —
/// so every exchange computes the same division from the same demands. A node gets its part,
/// but at most what the other nodes do not hold, and is recorded as holding the larger of its
/// grant and what it said it holds: a smaller grant applies only when the answer arrives, so a
/// record never falls below what may be running there, and the records never add up above the
/// threshold.
///
/// Returns, per key: the grant (`-` for a rate limit), then the live nodes and their demands.
const EXCHANGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
local me = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local demand, holding, threshold = string.match(ARGV[i + 2], '^(%d+):?(%d*):?(%d*)$')
  local all = redis.call('HGETALL', key)
  local live = {}
  local names = {me}
  local demands = {tonumber(demand)}
  local others = 0
  for j = 1, #all, 2 do
    local d, at, held = string.match(all[j + 1], '^(%d+):(%d+):?(%d*)$')
    if d and now - tonumber(at) <= stale then
      if all[j] ~= me then
        table.insert(live, all[j])
        table.insert(live, d)
        table.insert(names, all[j])
        table.insert(demands, tonumber(d))
        others = others + (tonumber(held) or 0)
      end
    else
      redis.call('HDEL', key, all[j])
    end
  end
  table.insert(live, me)
  table.insert(live, demand)
  local grant = '-'
  local record = demand .. ':' .. now
  if threshold ~= '' then
    local limit = tonumber(threshold)
    local n = #names
    local base = 0
    if limit >= n then base = 1 end
    local rest = limit - base * n
    local floor = limit / n / 20
    local total = 0
    local weights = {}
    for k = 1, n do
      weights[k] = math.max(demands[k] / 1000, floor)
      total = total + weights[k]
    end
    local parts = {}
    local order = {}
    local given = 0
    for k = 1, n do
      local exact = rest * weights[k] / total
      parts[k] = math.floor(exact)
      given = given + parts[k]
      order[k] = {k, exact - parts[k]}
    end
    table.sort(order, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return names[a[1]] < names[b[1]]
    end)
    for k = 1, rest - given do parts[order[k][1]] = parts[order[k][1]] + 1 end
    local slots = math.max(0, math.min(base + parts[1], limit - others))
    grant = tostring(slots)
    record = record .. ':' .. math.max(slots, tonumber(holding))
  end
  redis.call('HSET', key, me, record)
  redis.call('PEXPIRE', key, stale * 10)
  table.insert(live, 1, grant)
  out[i] = live
end
return out
";

/// What this node brings to one limit's exchange.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offer {
    /// Requests/s seen recently, admitted or not.
    pub demand: f64,
    /// A concurrency limit's: what this node may have in progress now, and the threshold.
    pub slots: Option<(u32, u32)>,
}

/// What one limit's exchange returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchanged {
    /// Every live node (this one included) and its demand.
    pub live: Vec<(String, f64)>,
    /// A concurrency limit's slots granted to this node.
    pub slots: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(String),
    #[error("unexpected answer: {0}")]
    Answer(String),
}

impl From<redis::RedisError> for ExchangeError {
    fn from(e: redis::RedisError) -> Self {
        ExchangeError::Redis(e.to_string())
    }
}

/// Connects to `address` (host:port) within `timeout`.
pub async fn connect(address: &str, timeout: Duration) -> Result<MultiplexedConnection, ExchangeError> {
    let client = redis::Client::open(format!("redis://{address}/"))?;
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
    tokio::time::timeout(timeout, client.get_multiplexed_async_connection_with_config(&config))
        .await
        .map_err(|_| ExchangeError::Timeout(timeout))?
        .map_err(ExchangeError::from)
}

/// This node's offer per key in; per key, its grant and every live node's demand out.
pub async fn exchange(
    connection: &mut MultiplexedConnection,
    keys: &[String],
    node: &str,
    offers: &[Offer],
    stale: Duration,
    timeout: Duration,
) -> Result<Vec<Exchanged>, ExchangeError> {
    // Hashed once (it is called by its SHA1): not at every renewal.
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(EXCHANGE));
    let mut invocation = SCRIPT.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    invocation.arg(node).arg(stale.as_millis() as u64);
    for offer in offers {
        let milli = (offer.demand.max(0.0) * 1000.0) as u64;
        match offer.slots {
            Some((holding, threshold)) => invocation.arg(format!("{milli}:{holding}:{threshold}")),
            None => invocation.arg(milli),
        };
    }
    let answer: Vec<Vec<String>> = tokio::time::timeout(timeout, invocation.invoke_async(connection))
        .await
        .map_err(|_| ExchangeError::Timeout(timeout))??;
    if answer.len() != keys.len() {
        return Err(ExchangeError::Answer(format!("{} lists for {} limits", answer.len(), keys.len())));
    }
    answer.into_iter().map(parse_answer).collect()
}

fn parse_answer(flat: Vec<String>) -> Result<Exchanged, ExchangeError> {
    let Some((grant, pairs)) = flat.split_first() else {
        return Err(ExchangeError::Answer("an empty list".into()));
    };
    let slots = match grant.as_str() {
        "-" => None,
        n => Some(n.parse::<u32>().map_err(|_| ExchangeError::Answer(format!("grant {n:?}")))?),
    };
    let live = pairs
        .chunks(2)
        .map(|pair| match pair {
            [node, milli] => milli
                .parse::<u64>()
                .map(|m| (node.clone(), m as f64 / 1000.0))
                .map_err(|_| ExchangeError::Answer(format!("demand {milli:?} of node {node:?}"))),
            _ => Err(ExchangeError::Answer("a node without its demand".into())),
        })
        .collect::<Result<_, _>>()?;
    Ok(Exchanged { live, slots })
}
