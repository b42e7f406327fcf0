-- Every cent captured in payments must show up in exactly one order total.
select *
from (
    select sum(total_amount) as order_total from {{ ref('orders') }}
) as o
cross join (
    select sum(amount) as payment_total from {{ ref('stg_payments') }}
) as p
where o.order_total <> p.payment_total
