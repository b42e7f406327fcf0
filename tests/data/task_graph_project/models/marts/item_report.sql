select i.id, i.name, i.kind, k.label from {{ ref('items_clean') }} as i join {{ ref('stg_kinds') }} as k using (kind)
